"""Benchmark inputs that every clone has: scikit-image's sample photos (its wheel ships them;
scikit-image comes with rembg) and a clip rendered from them, so no bench needs ../shared.

`BENCH_MEDIA_DIR` points at another folder of photos (astronaut.png, chelsea.png, coffee.png);
`clip()` uses `BENCH_CLIP` (e.g. ../shared/media/cockatoo.mp4) when set, else it renders a
1280x720 camera move over the astronaut photo once per machine into the temp folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")


def media_dir() -> Path:
    """The folder the benchmark photos are read from."""
    override = os.environ.get("BENCH_MEDIA_DIR")
    if override:
        return Path(override)
    import skimage.data

    return Path(skimage.data.__file__).parent


def photo(name: str = "astronaut.png") -> Path:
    return media_dir() / name


def clip(seconds: float = 4.0, fps: int = 20, size: tuple[int, int] = (1280, 720),
         head_in_frame: bool = False) -> Path:
    """A real-photo clip: BENCH_CLIP, else a slow pan and zoom over the astronaut photo (H.264),
    made once and cached under the temp folder. The pan is centred vertically, which cuts the
    face in half; `head_in_frame` keeps the top of the photo (a person clip, face and all)."""
    override = os.environ.get("BENCH_CLIP")
    if override:
        return Path(override)
    top = "-head" if head_in_frame else ""
    path = Path(tempfile.gettempdir()) / f"bench-astronaut-pan{top}-{size[0]}x{size[1]}-{fps}.mp4"
    if path.is_file():
        return path
    import av
    import numpy as np
    from PIL import Image

    source = Image.open(photo()).convert("RGB")
    width, height = size
    frames = int(seconds * fps)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20"}
        for i in range(frames):
            t = i / max(1, frames - 1)
            crop_w = source.width * (0.9 - 0.2 * t)  # zoom in while panning right
            crop_h = crop_w * height / width
            x0 = (source.width - crop_w) * t
            y0 = 0.0 if head_in_frame else (source.height - crop_h) / 2
            view = source.resize(size, Image.Resampling.BILINEAR,
                                 box=(x0, y0, x0 + crop_w, y0 + crop_h))
            frame = av.VideoFrame.from_ndarray(np.asarray(view), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return path
