"""The job renderer's pure parts: in-order masks with a bounded window of frames in flight."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipelines.render import iter_masks


def test_masks_come_back_in_order_with_a_bounded_window():
    in_flight, peak = 0, 0
    lock = threading.Lock()
    rng = random.Random(0)

    def compute(i: int) -> np.ndarray:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(rng.uniform(0, 0.01))  # out-of-order completion
        with lock:
            in_flight -= 1
        return np.full((2, 2), i % 256, np.uint8)

    with ThreadPoolExecutor(8) as pool:
        def submit(i: int):
            return pool.submit(compute, i).result

        got = [(i, int(mask[0, 0])) for i, mask in iter_masks(range(50), submit, window=4)]
    assert got == [(i, i % 256) for i in range(50)]
    assert peak <= 4


def test_frames_are_consumed_lazily():
    consumed = []

    def frames():
        for i in range(100):
            consumed.append(i)
            yield i

    stream = iter_masks(frames(), lambda i: (lambda: np.zeros((1, 1), np.uint8)), window=3)
    next(stream)
    assert len(consumed) == 3  # only the window has been read from the decoder


def _clip(path, frames=12, fps=12, size=(96, 64)):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            img = disk_frame(size, shift=i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def disk_frame(size, shift=0):
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (xx - w / 3 - shift) ** 2 + (yy - h / 2) ** 2 <= (h / 4) ** 2
    img = np.full((h, w, 3), 20, np.uint8)
    img[inside] = 230
    return img


def _bright_mask(rgb: np.ndarray):
    mask = np.where(rgb.mean(axis=2) > 128, 255, 0).astype(np.uint8)
    return lambda: mask


def test_render_video_transparent_webm_keeps_alpha_and_frames(tmp_path):
    from pipelines import video
    from pipelines.render import render_video

    src = _clip(tmp_path / "in.mp4")
    progress = []
    result = render_video(str(src), str(tmp_path / "out.webm"), _bright_mask,
                          output_format="webm", window=4,
                          on_progress=lambda done, total: progress.append((done, total)))
    assert result.frames == 12 and (result.width, result.height) == (96, 64)
    frames = list(video.read_alpha_webm(str(tmp_path / "out.webm")))
    assert len(frames) == 12
    first = frames[0]
    assert first[32, 32, 3] > 200 and first[5, 90, 3] < 30  # disk opaque, corner transparent
    assert progress[-1] == (12, 12)


def test_render_video_colour_background_mp4_with_trim_and_canvas(tmp_path):
    from pipelines import video
    from pipelines.compose import Background, Composition
    from pipelines.render import render_video

    src = _clip(tmp_path / "in.mp4", frames=24, fps=12)  # 2 s
    result = render_video(
        str(src), str(tmp_path / "out.mp4"), _bright_mask, output_format="mp4",
        background=Background(type="color", color="0,0,255"), max_duration_s=1.0,
        composition=Composition.model_validate({"canvas": {"width": 128, "height": 64}}))
    assert result.frames == 12 and result.processed_duration_s == 1.0
    info = video.probe(str(tmp_path / "out.mp4"))
    assert (info.width, info.height) == (128, 64)
    frame = next(video.iter_frames(str(tmp_path / "out.mp4"))).rgb
    assert frame[5, 2, 2] > 200 and frame[5, 2, 0] < 60  # blue background outside the subject


def test_a_failed_stream_cancels_the_masks_still_in_flight():
    """A video job that fails mid-way (here the third mask) leaves no model work running for
    nobody: every mask still in flight is cancelled, none that already came back."""
    cancelled: list[int] = []

    def submit(i):
        def wait():
            if i == 2:
                raise RuntimeError("replica lost")
            return np.full((1, 1), i, np.uint8)
        wait.cancel = lambda: cancelled.append(i)  # type: ignore[attr-defined]
        return wait

    seen = []
    with pytest.raises(RuntimeError, match="replica lost"):
        for i, _ in iter_masks(range(20), submit, window=4):
            seen.append(i)
    assert seen == [0, 1]
    assert sorted(cancelled) == [3, 4, 5]  # in flight when frame 2 failed (window of 4)
