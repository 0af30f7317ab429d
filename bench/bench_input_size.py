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
import shutil
import sys
import tempfile
from pathlib import Path

import onnx
from onnx import helper

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


def any_size(path: Path, folder: Path) -> Path:
    """A copy of the graph at `path` whose image input takes any height and width. Exports
    often pin the trained size: on the input, and (IMG.LY's IS-Net, traced from PyTorch's
    `interpolate(src, size=tar.shape[2:])`) as a constant target size of each decoder Resize;
    such a constant becomes the spatial shape of the tensor the result is concatenated with, or
    of the image input where it is concatenated with nothing (the side outputs)."""
    model = onnx.load(str(path))
    graph = model.graph
    image = next(v for v in graph.input if len(v.type.tensor_type.shape.dim) == 4)
    for i, name in ((2, "height"), (3, "width")):
        image.type.tensor_type.shape.dim[i].Clear()
        image.type.tensor_type.shape.dim[i].dim_param = name
    del graph.value_info[:]  # shapes inferred for the trained size
    for value in graph.output:
        value.type.tensor_type.ClearField("shape")
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    added = []
    for k, resize in enumerate(n for n in list(graph.node) if n.op_type == "Resize"):
        sizes = producer.get(resize.input[3]) if len(resize.input) > 3 else None
        pinned = producer.get(sizes.input[1]) if sizes is not None and len(sizes.input) > 1 else None
        if sizes is None or sizes.op_type != "Concat" or pinned is None or pinned.op_type != "Constant":
            continue  # the size is computed from a tensor already
        out = resize.output[0]
        while len(readers.get(out, [])) == 1 and readers[out][0].op_type == "Cast":
            out = readers[out][0].output[0]
        joins = [r for r in readers.get(out, []) if r.op_type == "Concat"]
        target = (next(i for i in joins[0].input if i != out) if joins else image.name)
        added += [helper.make_node("Shape", [target], [f"_tar{k}"], start=2, end=4)]
        sizes.input[1] = f"_tar{k}"
    graph.node.extend(added)  # onnxruntime orders the nodes itself
    out_path = folder / path.name
    onnx.save(model, str(out_path))
    return out_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SIZES))
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--half", choices=("test", "tune"), default="test",
                        help="tune: the half a size is chosen on (printed, never written)")
    args = parser.parse_args()
    samples = test_half(args.half)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-size-"))
    for spec, found in installed(args.models):
        model_id = spec.id
        path = any_size(found, tmp)
        for size in SIZES[model_id]:
            resized = spec.model_copy(update={"preprocess": spec.preprocess.model_copy(
                update={"height": size, "width": size})})
            try:
                ((sad, iou, ms),) = measure([OnnxSegmenter(resized, path, intra_op_threads=2,
                                                           precision="fp32")], samples)
            except InferenceError as exc:  # a graph with the trained size baked into a layer
                reason = exc.message.split("Status Message: ")[-1].split(". ")[0]
                rows.append(f"| {model_id} | {size}² | does not run: `{reason}` | | |")
            else:
                rows.append(f"| {model_id} | {size}² | {ms:.0f} | {sad:.2f} | {iou:.4f} |")
            print(rows[-1], flush=True)
    shutil.rmtree(tmp)
    section = "\n".join([
        BEGIN,
        f"Measured {datetime.date.today().isoformat()} on {machine()}; "
        f"`bench/bench_input_size.py`. {len(samples)} images of the exact-alpha test half; "
        "ms: median per image at 2 threads (float32), pre- and postprocessing included. "
        "IMG.LY's IS-Net export pins 1024² as the constant target size of each decoder Resize; "
        "the bench's copy takes that size from the tensor each result is joined with "
        "(`any_size`), which the service does not do yet.",
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
