"""Temporal mask smoothing (issue 5): frame-to-frame alpha change with and without smoothing.

    .venv/bin/python bench/bench_temporal.py
    .venv/bin/python bench/bench_temporal.py --out docs/benchmarks.md

Clips:
  real clip  $BENCH_CLIP (e.g. ../shared/media/cockatoo.mp4), else bench/media.py's 1280x720 pan over
             a real photo (20 fps), first --seconds (4) decoded with
             PyAV and downscaled to 640 wide (INTER_AREA) for speed; per-frame masks from the
             real u2netp-fp16w model (`OnnxSegmenter`, 2 threads). No ground truth: only the
             mean absolute alpha change between consecutive frames is reported.
  synthetic  640x360, 80 frames: a disk moving 3-7 px/frame and a static square, both with soft
             (6 px) edges, on a static textured background with mild sensor noise. The true
             mask is known; model flicker is simulated by +-40 levels of per-pixel, per-frame
             noise in a band around both outlines. Mean absolute error to the truth is reported
             too (whole frame, and in the noise bands of the static and of the moving outline), and the
             truth's own frame-to-frame change (real motion) as the floor.
Smoother: `pipelines.temporal.MaskSmoother()` with its defaults. The smoother's own cost is
timed at 1280x720 (median of 3 runs of 200 frames, OpenCV's default threads). The markdown table
goes to stdout, and with --out between the bench_temporal markers of that file (a new section is
appended when the markers are absent).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from docs_section import write_section  # noqa: E402
from media import clip as real_clip  # noqa: E402

MODELS_DIR = Path(os.environ.get("BGR_MODELS_DIR", "~/.cache/bgremove/models")).expanduser()

from pipelines.temporal import MaskSmoother, mean_abs_alpha_change  # noqa: E402

DOC_BEGIN, DOC_END = "<!-- bench_temporal:start -->", "<!-- bench_temporal:end -->"
DOC_HEAD = """## Temporal mask smoothing (issue 5)

Method: `bench/bench_temporal.py` runs `pipelines.temporal.MaskSmoother` (a motion-gated
recursive filter: where the image did not change since the previous frame the new mask is
blended with the previous smoothed one, where it changed the new mask is kept) over per-frame
masks and reports the mean absolute alpha change between consecutive frames (in % of full
scale) with and without it. On `cockatoo.mp4` (first 4 s, downscaled to 640 wide) the masks come
from the real u2netp-fp16w model and there is no ground truth. On a synthetic 640x360 clip (a
moving disk and a static square, soft edges, +-40 levels of per-frame noise near the outlines
standing in for model flicker) the true mask is known, so the mean absolute error to it is
reported too (whole frame, and in the noise bands of the static and of the moving outline), and
the truth's own change is the floor set by real motion. The smoother's cost per 1280x720
frame is timed on CPU.

"""


# --------------------------------------------------------------------------------------------
# Clips


def cockatoo_clip(seconds: float, width: int = 640) -> tuple[list, list] | None:
    import av

    from pipelines.catalog import load_catalog
    from pipelines.download import pull
    from pipelines.segmenter import OnnxSegmenter

    video = real_clip()
    spec = load_catalog().get("u2netp")
    model = MODELS_DIR / spec.weights.file
    if not model.is_file():
        model = pull(spec, MODELS_DIR)
    seg = OnnxSegmenter(spec, model, intra_op_threads=2)
    frames, masks = [], []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= seconds:
                break
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            rgb = cv2.resize(rgb, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
            frames.append(rgb)
            masks.append(seg.predict_batch([rgb])[0])
    return frames, masks


def synthetic_clip(n: int = 80, w: int = 640, h: int = 360, seed: int = 0):
    """(frames, noisy masks, true masks, the static square's noise band, the moving disk's
    noise band per frame) for a moving disk plus a static square."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(60, 190, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    bg = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:h, :w]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    soft, r = 6.0, 50.0
    # Signed distance to the square's outline (positive inside), for its alpha and noise band.
    sq = np.minimum(np.minimum(xx - 420, 560 - xx), np.minimum(yy - 120, 260 - yy))
    sq_alpha = np.clip(sq / soft + 0.5, 0, 1)
    frames, noisy, truth, moving_bands = [], [], [], []
    static_band = np.abs(sq) < 5
    for t in range(n):
        cx, cy = 80 + 3.0 * t, 180 + 60 * np.sin(t / 10)  # 3-7 px/frame along the path
        d = r - np.hypot(xx - cx, yy - cy)
        disk_alpha = np.clip(d / soft + 0.5, 0, 1)
        alpha = np.maximum(disk_alpha, sq_alpha)
        a = alpha[..., None]
        img = bg * (1 - a) + np.float32([40, 200, 60]) * sq_alpha[..., None] * (1 - disk_alpha[
            ..., None]) + np.float32([220, 30, 30]) * disk_alpha[..., None]
        img += rng.normal(0, 2.0, img.shape).astype(np.float32)
        frames.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        band = (np.abs(d) < 5) | static_band
        moving_bands.append((np.abs(d) < 5) & ~static_band)
        true8 = np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)
        flick = alpha * 255 + band * rng.uniform(-40, 40, alpha.shape)
        truth.append(true8)
        noisy.append(np.clip(np.rint(flick), 0, 255).astype(np.uint8))
    return frames, noisy, truth, static_band, moving_bands


# --------------------------------------------------------------------------------------------
# Measurements


def smooth(frames: list, masks: list, **kwargs) -> list:
    smoother = MaskSmoother(**kwargs)
    return [smoother(f, m) for f, m in zip(frames, masks)]


def mae_levels(masks: list, truth: list, where: list | None = None) -> float:
    """Mean absolute error in levels (0..255), over the whole frame or the `where` pixels."""
    where = where or [slice(None)] * len(masks)
    return float(np.mean([np.mean(np.abs(m.astype(np.float32) - t)[w]) for m, t, w in
                          zip(masks, truth, where)]))


def time_smoother(frames: list | None, runs: int = 3, n: int = 200) -> float:
    """Median ms per 1280x720 frame over `runs` runs of `n` frames."""
    if frames:
        frames = [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_LINEAR) for f in frames[:8]]
    else:
        rng = np.random.default_rng(1)
        base = rng.integers(0, 255, (720, 1280, 3), np.uint8)
        frames = [np.roll(base, 4 * i, axis=1) for i in range(8)]
    rng = np.random.default_rng(2)
    masks = [rng.integers(0, 255, (720, 1280), np.uint8) for _ in frames]
    times = []
    for _ in range(runs):
        smoother = MaskSmoother()
        smoother(frames[0], masks[0])
        t0 = time.perf_counter()
        for i in range(n):
            smoother(frames[i % len(frames)], masks[i % len(masks)])
        times.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(times)


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0, help="real-clip seconds to decode (4)")
    p.add_argument("--out", type=Path, help="markdown file to write the table into")
    args = p.parse_args(argv)

    rows = ["| clip | frames | masks | mean abs alpha change, % | MAE to truth, levels "
            "| MAE, static edge band | MAE, moving edge band |",
            "|---|---:|---|---:|---:|---:|---:|"]
    t0 = time.perf_counter()
    cock = cockatoo_clip(args.seconds)
    cock_frames = None
    if cock is None:
        print("skipping the real clip: no frames decoded", file=sys.stderr)
    else:
        cock_frames, masks = cock
        smoothed = smooth(cock_frames, masks)
        size = f"{cock_frames[0].shape[1]}x{cock_frames[0].shape[0]}"
        n = len(masks)
        rows.append(f"| {real_clip().name} ({size}) | {n} | u2netp, raw "
                    f"| {pct(mean_abs_alpha_change(masks))} | n/a | n/a | n/a |")
        rows.append(f"| {real_clip().name} ({size}) | {n} | u2netp, smoothed "
                    f"| {pct(mean_abs_alpha_change(smoothed))} | n/a | n/a | n/a |")
    frames, noisy, truth, static_band, moving_bands = synthetic_clip()
    smoothed = smooth(frames, noisy)
    n = len(frames)
    for label, ms in (("truth", truth), ("noisy (raw)", noisy), ("noisy, smoothed", smoothed)):
        rows.append(f"| synthetic (640x360) | {n} | {label} | {pct(mean_abs_alpha_change(ms))} "
                    f"| {mae_levels(ms, truth):.2f} "
                    f"| {mae_levels(ms, truth, [static_band] * n):.2f} "
                    f"| {mae_levels(ms, truth, moving_bands):.2f} |")
    ms_frame = time_smoother(cock_frames)
    body = "\n".join(rows)
    cv_threads = cv2.getNumThreads()
    facts = (f"Run {dt.date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}, OpenCV {cv2.__version__} "
             f"({cv_threads} threads). Smoother cost at 1280x720: **{ms_frame:.2f} ms/frame** "
             f"(median of 3 x 200 frames). Bench wall time {time.perf_counter() - t0:.0f} s.")
    print(body)
    print()
    print(facts)
    if args.out:
        section = "\n".join([DOC_BEGIN, "<!-- Generated by bench/bench_temporal.py; everything "
                             "between these markers is rewritten on each run. -->", "", facts, "",
                             "```sh", ".venv/bin/python bench/bench_temporal.py --out "
                             "docs/benchmarks.md", "```", "", body, "", DOC_END])
        write_doc(args.out, section)
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def write_doc(path: Path, section: str) -> None:
    write_section(path, DOC_BEGIN, DOC_END, DOC_HEAD, section)


if __name__ == "__main__":
    sys.exit(main())
