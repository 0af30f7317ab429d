"""The int8 quality gate: each model's int8 build against its float model, on the test half.

For each model: the int8 build is made exactly as `bgremove models quantize` makes it
(`pipelines.quantize.build_int8`) from the committed calibration set (bench/calibration.json:
the tuning half and two photos, never the test half), then both run over the quality
benchmark's exact-alpha **test half** (drawn subjects, real subjects, the hard set). Reported:
mean SAD and IoU of each, their change, the gate (SAD at most +3 %, IoU at most 0.01 lower:
`pipelines.catalog.INT8_*`), the median milliseconds per image of each at 2 threads, the
nodes kept in float, and the build's sha256: the figures a catalog entry's `weights.int8`
pins. The float model is the file as served on CPU.

    .venv/bin/python bench/bench_int8.py                       # all, writes docs/benchmarks.md
    .venv/bin/python bench/bench_int8.py --models u2netp --no-docs
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import quality_data as qd  # noqa: E402
from calibration_set import write_set  # noqa: E402

from pipelines import quality  # noqa: E402
from pipelines.catalog import Int8Gate, ModelSpec, load_catalog  # noqa: E402
from pipelines.quantize import build_int8  # noqa: E402
from pipelines.segmenter import OnnxSegmenter  # noqa: E402
from pipelines.weights import find_weights  # noqa: E402
from serve_app.core.settings import get_settings  # noqa: E402

from bench_shotgun import machine  # noqa: E402
from docs_section import write_section  # noqa: E402

BEGIN, END = "<!-- BEGIN bench_int8 -->", "<!-- END bench_int8 -->"
MODELS = ("u2netp", "isnet-imgly-medium", "mediapipe-selfie", "mediapipe-selfie-landscape")


def test_half(half: str = "test") -> list[qd.Sample]:
    """The quality benchmark's images of one half (`test`: where gates and choices are
    reported; `tune`: where choices are made)."""
    return [s for s in (*qd.samples(), *qd.real_samples(), *qd.hard_samples())
            if qd.half_of(s) == half]


def installed(model_ids: str) -> Iterator[tuple[ModelSpec, Path]]:
    """(spec, float weights) of each comma-separated catalog model installed here; the others
    are named on stderr and skipped."""
    catalog = load_catalog()
    dirs = get_settings().model_search_dirs()
    for model_id in model_ids.split(","):
        spec = catalog.get(model_id)
        path = find_weights(spec, dirs)
        if path is None:
            print(f"{model_id}: not installed, skipped", file=sys.stderr)
        else:
            yield spec, path


def measure(segs: Sequence[OnnxSegmenter], samples: list[qd.Sample]
            ) -> list[tuple[float, float, float]]:
    """(mean SAD, mean IoU, median ms) of each segmenter over `samples`, all run in turn on
    every image so that a busy moment of the machine falls on each."""
    for seg in segs:
        seg.predict(samples[0].rgb)  # the arena's first allocations are not the model's speed
    runs: list[tuple[list[float], list[float], list[float]]] = [([], [], []) for _ in segs]
    for s in samples:
        for seg, (sad, iou, ms) in zip(segs, runs):
            started = time.perf_counter()
            mask = seg.predict(s.rgb)
            ms.append((time.perf_counter() - started) * 1e3)
            score = quality.score(mask, s.alpha)
            sad.append(score.sad)
            iou.append(score.iou)
    return [(float(np.mean(sad)), float(np.mean(iou)), statistics.median(ms))
            for sad, iou, ms in runs]


def kept_rows(rows: list[str]) -> list[str]:
    """`rows`, after the rows of docs/benchmarks.md's table for models this run did not measure
    (so `--models u2netp` re-measures u2netp and keeps IS-Net's row, marked with its date)."""
    text = (REPO / "docs" / "benchmarks.md").read_text()
    if BEGIN not in text:
        return rows
    ran = {r.split("|")[1].strip() for r in rows}
    old = [line for line in text[text.index(BEGIN):text.index(END)].splitlines()
           if line.startswith("| ") and not line.startswith("| model ")
           and line.split("|")[1].strip().split(" ")[0] not in ran]
    return [line if " (measured " in line.split("|")[1] else
            line.replace(" |", f" (measured {measured_on(text)}) |", 1) for line in old] + rows


def measured_on(text: str) -> str:
    """The date the section in `text` says it was measured on."""
    head = text[text.index(BEGIN):].split("Measured ", 1)[1]
    return head.split(" ", 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    samples = test_half()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        images = write_set(Path(tmp) / "calibration")
        for spec, source in installed(args.models):
            model_id = spec.id
            built = Path(tmp) / spec.weights.int8_file
            started = time.perf_counter()
            report = build_int8(spec, source, built, images)
            build_s = time.perf_counter() - started
            sha = hashlib.sha256(built.read_bytes()).hexdigest()
            (f_sad, f_iou, f_ms), (q_sad, q_iou, q_ms) = measure(
                [OnnxSegmenter(spec, source, intra_op_threads=2, precision="fp32"),
                 OnnxSegmenter(spec, source, intra_op_threads=2, precision="int8", int8_path=built)],
                samples)
            gate = Int8Gate(sad_change_pct=round(100 * (q_sad / f_sad - 1), 2),
                            iou_change=round(q_iou - f_iou, 4),
                            measured=datetime.date.today())
            row = (f"| {model_id} | {f_ms:.0f} | {q_ms:.0f} | {f_ms / q_ms:.2f}x | {f_sad:.2f} | "
                   f"{q_sad:.2f} ({gate.sad_change_pct:+.1f} %) | {f_iou:.4f} | {q_iou:.4f} "
                   f"({gate.iou_change:+.4f}) | {'passed' if gate.passed else 'FAILED'} | "
                   f"{len(report.kept_float)}/{report.nodes} | `{sha[:12]}` |")
            rows.append(row)
            print(row, flush=True)
            print(f"  catalog: int8: {{sha256: {sha}, gate: {{sad_change_pct: "
                  f"{gate.sad_change_pct}, iou_change: {gate.iou_change}, measured: "
                  f"{gate.measured}}}}}  (build {build_s:.0f} s)", flush=True)
    section = "\n".join([
        BEGIN,
        f"Measured {datetime.date.today().isoformat()} on {machine()}; "
        f"`bench/bench_int8.py`. {len(samples)} images of the exact-alpha **test half**; int8 "
        f"builds calibrated on the {len(images)} images of bench/calibration.json (tuning half "
        "and two photos). ms: median per image at 2 threads, float and int8 run in turn on "
        "each image, the model alone (pre- and postprocessing included). Gate: SAD at most "
        "+3 % and IoU at most 0.01 below the float model; a model that fails it is served in "
        "float. *float kept*: nodes left unquantised (they read or write a tensor whose "
        "loudest channel peaks over 12x its median one).",
        "",
        "| model | float ms | int8 ms | speed-up | float SAD | int8 SAD | float IoU | int8 IoU "
        "| gate | float kept | int8 sha256 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *kept_rows(rows),
        END,
    ])
    if not args.no_docs:
        write_section(REPO / "docs" / "benchmarks.md", BEGIN, END,
                      "## Int8 builds against their float models (quality gate)\n\n", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
