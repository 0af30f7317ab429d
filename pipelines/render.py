"""An async image job's output from its input bytes: decode, segment, cut out, compose, encode.

Pure Python: the mask comes from a `segment` callable (in the service, the model deployment's
handle). Memory stays bounded for large images: the cut-out's edge decontamination runs in
strips (`effects.estimate_foreground`), and intermediate arrays are dropped as soon as the next
stage has what it needs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

from pipelines import effects
from pipelines.compose import Background, Composition, compose
from pipelines.errors import ImageTooLarge
from pipelines.images import decode_image, encode_image

T = TypeVar("T")
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp"}
# What async jobs accept; anything else is refused from its header, before decoding (no EPS).
JOB_INPUT_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg",
                     "WEBP": "image/webp", "TIFF": "image/tiff", "BMP": "image/bmp"}


def render_image_job(data: bytes, segment: Callable[[np.ndarray], np.ndarray], *,
                     max_pixels: int, output_format: str = "png",
                     background: Background | None = None,
                     composition: Composition | None = None) -> tuple[bytes, str]:
    """Encoded output and its media type. Raises the project's errors for bad input."""
    try:
        image = decode_image(data, max_pixels, formats=JOB_INPUT_FORMATS)
    except ImageTooLarge:
        raise ImageTooLarge(f"Image has more than {max_pixels:,} pixels.") from None
    mask = segment(image.rgb)
    if image.alpha is not None:  # keep transparency the input already had
        mask = ((mask.astype(np.uint16) * image.alpha) // 255).astype(np.uint8)
    cut = effects.cutout(image.rgb, mask)
    del image, mask
    out = compose(cut, background or Background(), composition)
    del cut
    return encode_image(out, output_format), MEDIA_TYPES[output_format]


def iter_masks(frames: Iterable[T], submit: Callable[[T], Callable[[], np.ndarray]],
               window: int = 16) -> Iterator[tuple[T, np.ndarray]]:
    """Masks for a stream of frames, in order, with up to `window` frames in flight at once.

    `submit(frame)` starts the mask computation (e.g. a call to a model deployment, which may
    batch it with other frames and run on any of its replicas) and returns a function that
    blocks until that mask is ready. Only `window` frames are held, whatever the clip's length.
    """
    pending: deque[tuple[T, Callable[[], np.ndarray]]] = deque()
    for frame in frames:
        pending.append((frame, submit(frame)))
        if len(pending) >= window:
            head, wait = pending.popleft()
            yield head, wait()
    while pending:
        head, wait = pending.popleft()
        yield head, wait()
