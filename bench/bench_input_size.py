"""Input size as a knob: each model at its trained size and smaller ones, on the test half.

A model's input size is its catalog entry's `preprocess.height`/`width` (a family preset an
entry may override). Fully convolutional models (U2-Net, IS-Net, MediaPipe's selfie model)
accept other sizes; this measures what that trades: mean SAD and IoU on the quality
benchmark's exact-alpha **test half**, and the median milliseconds per image at 2 threads.

    .venv/bin/python bench/bench_input_size.py                    # writes docs/benchmarks.md
    .venv/bin/python bench/bench_input_size.py --models u2netp --no-docs
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from bench_int8 import installed, measure, test_half  # noqa: E402

from pipelines.errors import InferenceError  # noqa: E402
from pipelines.segmenter import OnnxSegmenter  # noqa: E402

from bench_shotgun import machine  # noqa: E402
from docs_section import write_section  # noqa: E402

BEGIN, END = "<!-- BEGIN bench_input_size -->", "<!-- END bench_input_size -->"
SIZES = {"isnet-imgly-medium": (1024, 768, 640, 512), "u2netp": (320, 256, 192)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SIZES))
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--half", choices=("test", "tune"), default="test",
                        help="tune: the half a size is chosen on (printed, never written)")
    args = parser.parse_args()
    samples = test_half(args.half)
    rows = []
    for spec, found in installed(args.models):
        model_id = spec.id
        for size in SIZES[model_id]:
            try:  # as a pool's `input_size` runs it (pipelines.input_size.any_size)
                ((sad, iou, ms),) = measure([OnnxSegmenter(spec, found, intra_op_threads=2,
                                                           precision="fp32", input_size=size)],
                                            samples)
            except InferenceError as exc:  # a graph with the trained size baked into a layer
                reason = exc.message.split("Status Message: ")[-1].split(". ")[0]
                rows.append(f"| {model_id} | {size}² | does not run: `{reason}` | | |")
            else:
                rows.append(f"| {model_id} | {size}² | {ms:.0f} | {sad:.2f} | {iou:.4f} |")
            print(rows[-1], flush=True)
    section = "\n".join([
        BEGIN,
        f"Measured {datetime.date.today().isoformat()} on {machine()}; "
        f"`bench/bench_input_size.py`. {len(samples)} images of the exact-alpha test half; "
        "ms: median per image at 2 threads (float32), pre- and postprocessing included. "
        "IMG.LY's IS-Net export pins 1024² as the constant target size of each decoder Resize; "
        "at another size each Resize takes its size from the tensor its result is joined with "
        "(`pipelines.input_size.any_size`), as a pool's `input_size` option runs it.",
        "",
        "| model | input | ms | SAD | IoU |",
        "|---|---|---|---|---|",
        *rows,
        END,
    ])
    if not args.no_docs and args.half == "test":
        write_section(REPO / "docs" / "benchmarks.md", BEGIN, END,
                      "## Input size against quality\n\n", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
