"""An async image job's output from its input bytes: decode, segment, cut out, compose, encode.

Pure Python: the mask comes from a `segment` callable (in the service, the model deployment's
handle). Memory stays bounded for large images: the cut-out's edge decontamination runs in
strips (`effects.estimate_foreground`), and intermediate arrays are dropped as soon as the next
stage has what it needs.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2
import numpy as np

from pipelines import effects, output, rvm, video
from pipelines.compose import Background, Composition, compose
from pipelines.errors import ImageTooLarge, InvalidRequest
from pipelines.images import INPUT_FORMATS, DecodedImage, decode_image
from pipelines.output import OutputOptions

T = TypeVar("T")
# What async jobs accept: the one allow-list of every image route.
JOB_INPUT_FORMATS = INPUT_FORMATS


def decode_job_image(data: bytes, max_pixels: int) -> DecodedImage:
    """An async job's (or batch run's) input: the accepted formats only, at most `max_pixels`."""
    try:
        return decode_image(data, max_pixels, formats=JOB_INPUT_FORMATS)
    except ImageTooLarge:
        raise ImageTooLarge(f"Image has more than {max_pixels:,} pixels.") from None


def render_image_job(data: bytes, segment: Callable[[np.ndarray], np.ndarray], *,
                     max_pixels: int, output_format: str = "png",
                     background: Background | None = None,
                     composition: Composition | None = None,
                     options: OutputOptions | None = None) -> tuple[bytes, str]:
    """Encoded output and its media type. Raises the project's errors for bad input.

    The output options apply as on the image endpoints; a crop comes before the composition
    (which then places the subject's box on its canvas), the size cap after it."""
    options = options or OutputOptions()
    image = decode_job_image(data, max_pixels)
    mask = output.prepare_mask(image.rgb, segment(image.rgb), options)
    cut = [cutout(image, mask)]
    del image, mask  # large inputs: only the cut-out is needed from here on
    return _compose_encode(cut, output_format, background, composition, options)


def render_cutout(image: DecodedImage, mask: np.ndarray, *, output_format: str = "png",
                  background: Background | None = None,
                  composition: Composition | None = None) -> tuple[bytes, str]:
    """The same output from an image already decoded and its mask (batch runs)."""
    return _compose_encode([cutout(image, mask)], output_format, background, composition)


def cutout(image: DecodedImage, mask: np.ndarray) -> np.ndarray:
    """The RGBA cut-out (edge colours decontaminated) of a decoded image and its model mask,
    keeping any transparency the input had: the one cut-out step of every API."""
    return effects.cutout(image.rgb, image.within_alpha(mask))


def _compose_encode(cut: list[np.ndarray], output_format: str, background: Background | None,
                    composition: Composition | None,
                    options: OutputOptions | None = None) -> tuple[bytes, str]:
    """`cut` holds the one cut-out and is emptied: it is freed once composed, before encoding.
    Output `mask` is the alpha of the cut-out as composed on a transparent canvas."""
    options = options or OutputOptions()
    rgba = cut.pop()
    if options.crop:
        rgba = output.crop_to_subject(rgba, rgba[:, :, 3], options.crop_margin)
    if options.output == "mask":
        out = compose(rgba, Background(), composition)[:, :, 3]
    else:
        out = compose(rgba, background or Background(), composition)
    del rgba
    out = output.fit(out, options.max_size)
    return (output.encode(out, output_format, webp_lossless=False),
            output.MEDIA_TYPES[output_format])


def iter_masks(frames: Iterable[T], submit: Callable[[T], Callable[[], np.ndarray]],
               window: int = 16) -> Iterator[tuple[T, np.ndarray]]:
    """Masks for a stream of frames, in order, with up to `window` frames in flight at once.

    `submit(frame)` starts the mask computation (e.g. a call to a model deployment, which may
    batch it with other frames and run on any of its replicas) and returns a function that
    blocks until that mask is ready. Only `window` frames are held, whatever the clip's length.
    When the stream ends early (a failed frame, a failed write, the consumer stopping), the
    waits still pending are cancelled where they can be (a `cancel` attribute), so the model
    replicas drop that work instead of finishing it for nobody.
    """
    pending: deque[tuple[T, Callable[[], np.ndarray]]] = deque()
    try:
        for frame in frames:
            pending.append((frame, submit(frame)))
            if len(pending) >= window:
                head, wait = pending.popleft()
                yield head, wait()
        while pending:
            head, wait = pending.popleft()
            yield head, wait()
    finally:
        _cancel(wait for _, wait in pending)


def _cancel(waits: Iterable[Callable[[], Any]]) -> None:
    for wait in waits:
        cancel = getattr(wait, "cancel", None)
        if cancel is not None:
            cancel()


def iter_chunked_masks(frames: Iterable[T],
                       submit_chunk: Callable[[list[T], int], Callable[[], list[np.ndarray]]],
                       size: int, warmup: int, window: int = 2) -> Iterator[tuple[T, np.ndarray]]:
    """Masks for a stream of frames from a recurrent model (RVM), in order: the clip goes out
    in chunks of `size` frames, each led by `warmup` frames of the one before
    (`pipelines.rvm.chunks`), up to `window` chunks in flight (so several replicas work on one
    clip). `submit_chunk(frames, warmup)` starts a chunk and returns the wait for the masks of
    its frames after the warm-up."""
    pending: deque[tuple[list[T], Callable[[], list[np.ndarray]]]] = deque()

    def drain_one() -> Iterator[tuple[T, np.ndarray]]:
        own, wait = pending.popleft()
        masks = wait()
        if len(masks) != len(own):
            raise ValueError(f"{len(masks)} masks for a chunk of {len(own)} frames")
        yield from zip(own, masks)

    try:
        for chunk in rvm.chunks(frames, size, warmup):
            pending.append((chunk.frames[chunk.warmup:],
                            submit_chunk(chunk.frames, chunk.warmup)))
            if len(pending) >= window:
                yield from drain_one()
        while pending:
            yield from drain_one()
    finally:
        _cancel(wait for _, wait in pending)


@dataclass(frozen=True)
class VideoResult:
    frames: int
    original_duration_s: float
    processed_duration_s: float
    width: int
    height: int
    audio_error: str | None


class _Encoder:
    """Frames handed to a `VideoWriter` on a thread of its own, so that encoding one frame
    overlaps decoding, smoothing and compositing the next (FFmpeg's encoders run without the
    GIL). At most `depth` frames wait; an encoder error is raised in the caller at the next
    frame or on leaving."""

    def __init__(self, writer: video.VideoWriter, depth: int = 4) -> None:
        self._writer = writer
        self._frames: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="video-encoder", daemon=True)

    def __enter__(self) -> _Encoder:
        self._thread.start()
        return self

    def _run(self) -> None:
        while (frame := self._frames.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write(frame)
                except BaseException as exc:  # noqa: BLE001 - raised in the caller
                    self._error = exc

    def write(self, frame: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._frames.put(frame)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._frames.put(None)
        self._thread.join()
        if self._error is not None and exc_type is None:
            raise self._error


def _over(fg: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[:, :, None] * np.float32(1 / 255)
    out = fg.astype(np.float32) * a + background.astype(np.float32) * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def fit_background(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A background image scaled to cover width x height and centre-cropped (no distortion)."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1
                         else cv2.INTER_LINEAR)
    y, x = (size[1] - height) // 2, (size[0] - width) // 2
    return np.ascontiguousarray(resized[y:y + height, x:x + width])


def check_video_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    """`InvalidRequest` when a video's frames (or canvas) are larger than `max_pixels`."""
    if max_pixels is not None and width * height > max_pixels:
        raise InvalidRequest(f"{what} are {width}x{height}: more than the {max_pixels:,} "
                             "pixels a video frame may have here.")


def render_video(src: str, dst: str, submit: Callable[[np.ndarray], Callable[[], np.ndarray]], *,
                 output_format: str, background: Background | None = None,
                 background_image: np.ndarray | None = None,
                 composition: Composition | None = None, max_duration_s: float | None = None,
                 window: int = 16, smoother: Callable[[np.ndarray, np.ndarray], np.ndarray]
                 | None = None, decontaminate: bool = False,
                 on_progress: Callable[[int, int | None], None] | None = None,
                 submit_chunk: Callable[[list[np.ndarray], int],
                                        Callable[[], list[np.ndarray]]] | None = None,
                 chunk_frames: int = 24, chunk_warmup: int = 2,
                 max_pixels: int | None = None) -> VideoResult:
    """Stream `src` through segmentation into `dst`: frames are decoded one by one, their masks
    computed `window` at a time (`submit`, see `iter_masks`), smoothed over time, composited
    (transparent, colour, image, optional canvas composition) and encoded as they come back.

    A recurrent model (RVM) is given `submit_chunk` instead: the clip's frames go to it in
    order, `chunk_frames` at a time, each chunk led by `chunk_warmup` frames of the one before
    (`iter_chunked_masks`); `submit` is not used then.

    Background priority: `background_image` over a colour `background` over transparency.
    Audio is kept (trimmed the same way) where the container allows. Frames and the canvas
    over `max_pixels` are refused (`InvalidRequest`) before anything is decoded.
    """
    info = video.probe(src)
    width, height = info.display_size
    check_video_pixels(width, height, max_pixels, "Video frames")
    if composition is not None and composition.canvas is not None:
        width, height = composition.canvas.width, composition.canvas.height
        check_video_pixels(width, height, max_pixels, "composition.canvas")
    total = None  # unknown: a file with no duration and no packet timestamps
    if info.duration_known:
        total = video.duration_ceiling_frames(
            video.processed_duration(info.duration_s, max_duration_s), info.fps)
    bg_pixels = None
    if background_image is not None:
        bg_pixels = fit_background(background_image, width, height)
    elif background is not None and background.type == "color":
        bg_pixels = np.empty((height, width, 3), np.uint8)
        bg_pixels[:] = background.rgb
    frames = video.iter_frames(src, max_duration_s)
    count = 0
    with video.VideoWriter(dst, output_format, width, height, info.fps, audio_from=src,
                           max_duration_s=max_duration_s) as file, _Encoder(file) as writer:
        masks: Iterator[tuple[video.Frame, np.ndarray]]
        if submit_chunk is not None:
            chunked = submit_chunk
            masks = iter_chunked_masks(frames, lambda fs, k: chunked([f.rgb for f in fs], k),
                                       chunk_frames, chunk_warmup)
        else:
            masks = iter_masks(frames, lambda f: submit(f.rgb), window)
        for frame, mask in masks:
            if smoother is not None:
                mask = smoother(frame.rgb, mask)
            fg = effects.estimate_foreground(frame.rgb, mask) if decontaminate else frame.rgb
            rgba = np.dstack([fg, mask])
            if composition is not None:
                rgba = compose(rgba, Background(), composition)
            out = rgba if bg_pixels is None else _over(rgba[:, :, :3], rgba[:, :, 3], bg_pixels)
            writer.write(out)
            count += 1
            if on_progress is not None:
                on_progress(count, None if total is None else max(total, count))
    audio_error = file.audio_error
    # what was processed: the stated length up to the cap, or, when the file states none,
    # the frames actually written (never 0 for a clip that produced frames)
    processed = (video.processed_duration(info.duration_s, max_duration_s)
                 if info.duration_known else float(count / info.fps))
    return VideoResult(frames=count, original_duration_s=info.duration_s,
                       processed_duration_s=processed,
                       width=width, height=height, audio_error=audio_error)
