"""Person video against exact ground truth: Robust Video Matting (one pass, and in chunks with
warm-up frames as the service runs it) against the selfie model with and without the smoother.

Clips (`quality_data`): each photographed person with no visible face walking over a panning
photo (`person_clip`; a known-alpha subject moved over real footage: rigid motion, constant
light, unlike real capture), and the drawn `swinging_clip` (a fast arm). Each clip sits in the
half of its subject (bench/quality_split.json): the warm-up length K is chosen on the tuning
half (the smallest K whose flicker at chunk seams is no worse than inside chunks); both halves
are reported. Metrics as RVM's authors report them (`pipelines.quality.clip_score`).

    .venv/bin/python bench/bench_video_quality.py          # writes its docs/benchmarks.md section
    .venv/bin/python bench/bench_video_quality.py --quick  # no docs update
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import quality_data as qd  # noqa: E402

from pipelines import quality, rvm  # noqa: E402
from pipelines.catalog import load_catalog  # noqa: E402
from pipelines.effects import estimate_foreground  # noqa: E402
from pipelines.segmenter import OnnxSegmenter  # noqa: E402
from pipelines.temporal import MaskSmoother  # noqa: E402
from pipelines.weights import find_weights  # noqa: E402
from serve_app.core.settings import get_settings  # noqa: E402

import real_subjects as rs  # noqa: E402
from bench_shotgun import machine  # noqa: E402
from docs_section import write_section  # noqa: E402

BEGIN, END = "<!-- BEGIN bench_video_quality -->", "<!-- END bench_video_quality -->"
CHUNK = 6  # small chunks, so that 24-frame clips have three seams
WARMUPS = (0, 1, 2, 4, 8)


def clips() -> list[tuple[str, str, list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]]:
    """(name, half, frames, true alphas, true foregrounds if known): each person over each
    scene, and the drawn arm."""
    out = []
    for name in rs.PEOPLE:
        for scene, place in enumerate(qd.SCENES):
            fgs: list[np.ndarray] = []
            frames, truths = qd.person_clip(name, scene=scene, foregrounds=fgs)
            out.append((f"{name.rsplit('/', 1)[-1]} walking, {place}", qd.split()[name],
                        frames, truths, fgs))
    frames, truths = qd.swinging_clip()
    out.append(("strands, swinging arm", qd.split()["strands"], frames, truths, None))
    return out


def composite_error(alphas: list[np.ndarray], colours: list[np.ndarray],
                    truths: list[np.ndarray], true_fgs: list[np.ndarray]) -> tuple[float, float]:
    """How far the subject pasted on a new (mid-grey) background lands from the truth pasted
    there, mean absolute error in 0..255 over the pixels either alpha touches: over all of
    them, and over the soft edge only (0 < true alpha < 1), where the old background shows."""
    grey = 128.0
    every, edge = [], []
    for a, f, ta, tf in zip(alphas, colours, truths, true_fgs):
        af = a.astype(np.float32)[..., None] / 255
        ta3 = ta.astype(np.float32)[..., None]
        ours = af * f.astype(np.float32) + (1 - af) * grey
        true = tf.astype(np.float32) + (1 - ta3) * grey  # the stamp's colour is premultiplied
        err = np.abs(ours - true).mean(axis=2)
        touched = (a > 0) | (ta > 0)
        soft = (ta > 0.02) & (ta < 0.98)
        every.append(float(err[touched].mean()) if touched.any() else 0.0)
        edge.append(float(err[soft].mean()) if soft.any() else 0.0)
    return statistics.fmean(every), statistics.fmean(edge)


def seam_flicker(masks: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, float]:
    """dtSSD (x 1e2) of the transitions into a chunk's first frame, and of all the others."""
    def term(t: int) -> float:
        d = ((masks[t].astype(np.float32) - masks[t - 1]) / 255
             - (truths[t].astype(np.float32) - truths[t - 1]))
        return float(np.sqrt(np.mean(d * d))) * 1e2
    seams = [term(t) for t in range(CHUNK, len(masks), CHUNK)]
    inside = [term(t) for t in range(1, len(masks)) if t % CHUNK]
    return statistics.fmean(seams), statistics.fmean(inside)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="no docs update")
    args = parser.parse_args()
    catalog, dirs = load_catalog(), get_settings().model_search_dirs()
    paths = {m: find_weights(catalog.get(m), dirs) for m in ("rvm", "mediapipe-selfie")}
    if None in paths.values():
        sys.exit("bgremove models pull rvm mediapipe-selfie")
    selfie = OnnxSegmenter(catalog.get("mediapipe-selfie"), paths["mediapipe-selfie"])
    matter = rvm.RecurrentMatter(OnnxSegmenter(catalog.get("rvm"), paths["rvm"]).session)

    rows, seams, fg_rows = [], {}, []
    for name, half, frames, truths, true_fgs in clips():
        per_frame = [selfie.predict(f) for f in frames]
        smoother = MaskSmoother()
        sources = {"selfie": per_frame,
                   "selfie + smoother": [smoother(f, m) for f, m in zip(frames, per_frame)],
                   "rvm, one pass": matter.run(frames)}
        for k in WARMUPS:
            masks: list[np.ndarray] = []
            for chunk in rvm.chunks(frames, CHUNK, k):
                masks += matter.run(chunk.frames, chunk.warmup)
            sources[f"rvm, chunks of {CHUNK}, K={k}"] = masks
            seams[(name, half, k)] = seam_flicker(masks, truths)
        for source, masks in sources.items():
            rows.append((name, half, source, quality.clip_score(masks, truths)))
        if true_fgs is None:
            continue
        state, alphas, colours = matter.zero_state(), [], []
        ratio = rvm.ratio_for(frames[0].shape[1], frames[0].shape[0])
        for f in frames:
            a, c, state = matter.matte(f, state, ratio)
            alphas.append(a)
            colours.append(c)
        fused = [estimate_foreground(f, a) for f, a in zip(frames, alphas)]
        fg_rows.append((name, half, composite_error(alphas, colours, truths, true_fgs),
                        composite_error(alphas, fused, truths, true_fgs),
                        composite_error(alphas, frames, truths, true_fgs)))

    tune_k = [k for k in WARMUPS if statistics.fmean(
        seams[(n, h, kk)][0] - seams[(n, h, kk)][1] for n, h, kk in seams
        if h == "tune" and kk == k) <= 0]
    chosen = tune_k[0] if tune_k else WARMUPS[-1]

    # speed: a 720p frame at the service's working size and ratio
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), np.uint8)
    work = rvm.to_work(frame)
    state, times = matter.zero_state(), []
    ratio = rvm.ratio_for(work.shape[1], work.shape[0])
    for _ in range(12):
        started = time.perf_counter()
        _, state = matter.step(rvm.to_work(frame), state, ratio)
        times.append((time.perf_counter() - started) * 1e3)
    ms = statistics.median(times[2:])

    lines = ["| clip | half | masks from | MAD | MSE | Grad | dtSSD | worst IoU | kept |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, half, source, s in rows:
        lines.append(f"| {name} | {half} | {source} | {s.mad:.2f} | {s.mse:.2f} | {s.grad:.2f} "
                     f"| {s.dtssd:.3f} | {s.worst_iou:.3f} | {s.kept:.0%} |")
    means = ["| half | masks from | MAD | MSE | dtSSD | worst IoU | kept |",
             "|---|---|---|---|---|---|---|"]
    for half in ("tune", "test"):
        for source in dict.fromkeys(r[2] for r in rows):
            sel = [r[3] for r in rows if r[1] == half and r[2] == source]
            means.append(f"| {half} | {source} | {statistics.fmean(s.mad for s in sel):.2f} | "
                         f"{statistics.fmean(s.mse for s in sel):.2f} | "
                         f"{statistics.fmean(s.dtssd for s in sel):.3f} | "
                         f"{min(s.worst_iou for s in sel):.3f} | "
                         f"{statistics.fmean(s.kept for s in sel):.0%} |")
    seam_lines = ["| half | K | dtSSD at seams | dtSSD inside chunks |", "|---|---|---|---|"]
    for half in ("tune", "test"):
        for k in WARMUPS:
            vals = [seams[(n, h, kk)] for n, h, kk in seams if h == half and kk == k]
            seam_lines.append(f"| {half} | {k} | {statistics.fmean(v[0] for v in vals):.3f} | "
                              f"{statistics.fmean(v[1] for v in vals):.3f} |")
    fg_lines = ["| half | clips | frame colours as they are | Blur-Fusion | RVM's foreground |",
                "|---|---|---|---|---|"]
    for half in ("tune", "test"):
        sel = [r for r in fg_rows if r[1] == half]
        cells = [f"{statistics.fmean(r[i][0] for r in sel):.2f} / "
                 f"{statistics.fmean(r[i][1] for r in sel):.2f}" for i in (4, 3, 2)]
        fg_lines.append(f"| {half} | {len(sel)} | {' | '.join(cells)} |")
    section = (
        f"{BEGIN}\n_{machine()}; {len(rows) // (3 + len(WARMUPS))} clips of 24 frames at 256x256; "
        f"`bench/bench_video_quality.py`._\n\nMeans per half (lower is better except worst IoU "
        f"and kept):\n\n" + "\n".join(means)
        + f"\n\nFlicker at chunk seams (the transition into a chunk's first frame) against "
        f"inside chunks; K = warm-up frames. Chosen on the tuning half: **K = {chosen}** (the "
        f"smallest K whose seams are no worse than the inside).\n\n" + "\n".join(seam_lines)
        + f"\n\nRVM at 720p (sent at {work.shape[1]}x{work.shape[0]}, downsample ratio "
        f"{ratio:.2f}), one process with every core: median {ms:.0f} ms a frame "
        f"({1000 / ms:.1f} frames/s).\n\nThe subject's colours, pasted with RVM's alpha on a "
        f"mid-grey background against the truth pasted there: mean absolute error (0-255) over "
        f"every pixel either alpha touches / over the soft edge only (lower is better):\n\n"
        + "\n".join(fg_lines) + "\n\nEvery clip:\n\n" + "\n".join(lines) + f"\n{END}")
    print(section)
    if not args.quick:
        write_section(REPO / "docs" / "benchmarks.md", BEGIN, END,
                      "## Person video against exact ground truth\n\n", section)


if __name__ == "__main__":
    main()
