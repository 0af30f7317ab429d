"""`refine=matting` against `refine=none` on exact ground truth, and what it costs.

Masks from the installed models (u2netp, IS-Net) on the quality benchmark's soft-edged and
thin-part images (`quality_data`, alpha known exactly); the error is measured on the edge band
(where 0.02 < true alpha < 0.98, dilated by 4 px), where matting works: SAD and gradient
error, plus MAE over the whole image. Time per image for the refinement alone at 1024² and
2048² (the composite scaled up; `max_pixels` caps what the solver sees).

    .venv/bin/python bench/bench_matting.py     # writes its section of docs/benchmarks.md
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import quality_data as qd  # noqa: E402

from pipelines import output, quality  # noqa: E402
from pipelines.catalog import load_catalog  # noqa: E402
from pipelines.segmenter import OnnxSegmenter  # noqa: E402
from pipelines.weights import find_weights  # noqa: E402
from serve_app.core.settings import get_settings  # noqa: E402

from bench_shotgun import machine  # noqa: E402
from docs_section import write_section  # noqa: E402

BEGIN, END = "<!-- BEGIN bench_matting -->", "<!-- END bench_matting -->"
MODELS = ("u2netp", "isnet-imgly-medium")


def band_of(alpha: np.ndarray) -> np.ndarray:
    soft = ((alpha > 0.02) & (alpha < 0.98)).astype(np.uint8)
    return cv2.dilate(soft, np.ones((9, 9), np.uint8)).astype(bool)


def main() -> None:
    catalog, dirs = load_catalog(), get_settings().model_search_dirs()
    samples = qd.samples(foregrounds=("soft", "strands", "horse"))
    lines = ["| model | refine | band SAD | band grad | MAE (all) |", "|---|---|---|---|---|"]
    for model_id in MODELS:
        path = find_weights(catalog.get(model_id), dirs)
        if path is None:
            continue
        seg = OnnxSegmenter(catalog.get(model_id), path)
        rows: dict[str, list[tuple[float, float, float]]] = {"none": [], "matting": []}
        for s in samples:
            mask = seg.predict(s.rgb)
            band = band_of(s.alpha)
            truth = s.alpha
            for refine, m in (("none", mask), ("matting", output.refine_matting(s.rgb, mask))):
                mf = m.astype(np.float32) / 255
                rows[refine].append((quality.sad(mf[band], truth[band]),
                                     quality.gradient_error(mf * band, truth * band),
                                     quality.mae(mf, truth)))
        for refine, values in rows.items():
            sad, grad, mae = (statistics.fmean(v[i] for v in values) for i in range(3))
            lines.append(f"| {model_id} | {refine} | {sad:.2f} | {grad:.2f} | {mae:.4f} |")
    times = ["| image | refine=matting, median of 3 (s) |", "|---|---|"]
    s = samples[0]
    for side in (1024, 2048):
        rgb = cv2.resize(s.rgb, (side, side), interpolation=cv2.INTER_CUBIC)
        alpha = cv2.resize(s.alpha, (side, side), interpolation=cv2.INTER_LINEAR)
        mask = np.where(alpha > 0.5, 255, 0).astype(np.uint8)
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            output.refine_matting(rgb, mask)
            runs.append(time.perf_counter() - started)
        times.append(f"| {side}² | {statistics.median(runs):.2f} |")
    section = (f"{BEGIN}\n_{machine()}; {len(samples)} images (soft edges and thin parts, "
               f"exact alpha); `bench/bench_matting.py`._\n\n" + "\n".join(lines) + "\n\n"
               + "\n".join(times) + f"\n{END}")
    print(section)
    write_section(REPO / "docs" / "benchmarks.md", BEGIN, END,
                  "## Edge refinement (`refine=matting`)\n\n", section)


if __name__ == "__main__":
    main()
