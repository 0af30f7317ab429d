"""Running a model at another input size than the one its export pins.

Fully convolutional models (U2-Net, IS-Net, MediaPipe's selfie model) accept other sizes, but
exports often pin the trained one: on the image input, and (IMG.LY's IS-Net, traced from
PyTorch's `interpolate(src, size=tar.shape[2:])`) as a constant target size of each decoder
Resize. `any_size` rewrites such a graph so that each of those Resizes takes its size from the
tensor its result is concatenated with (or from the image input, where it is concatenated with
nothing: the side outputs), and the image input takes any height and width. A pool's
`input_size` option (serve_app/config.py) runs a model that way; docs/benchmarks.md ("Input
size against quality") has what each size trades.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper


def any_size(graph: str | Path | bytes) -> bytes:
    """The serialized graph (a file, or a serialized one) with its image input and pinned
    Resize sizes freed."""
    model = onnx.load_from_string(graph) if isinstance(graph, bytes) else onnx.load(str(graph))
    g = model.graph
    image = next(v for v in g.input if len(v.type.tensor_type.shape.dim) == 4)
    for i, name in ((2, "height"), (3, "width")):
        image.type.tensor_type.shape.dim[i].Clear()
        image.type.tensor_type.shape.dim[i].dim_param = name
    del g.value_info[:]  # shapes inferred for the trained size
    for value in g.output:
        value.type.tensor_type.ClearField("shape")
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    added = []
    for k, resize in enumerate(n for n in list(g.node) if n.op_type == "Resize"):
        sizes = producer.get(resize.input[3]) if len(resize.input) > 3 else None
        pinned = (producer.get(sizes.input[1])
                  if sizes is not None and len(sizes.input) > 1 else None)
        if sizes is None or sizes.op_type != "Concat" or pinned is None \
                or pinned.op_type != "Constant":
            continue  # the size is computed from a tensor already
        out = resize.output[0]
        while len(readers.get(out, [])) == 1 and readers[out][0].op_type == "Cast":
            out = readers[out][0].output[0]
        joins = [r for r in readers.get(out, []) if r.op_type == "Concat"]
        target = next(i for i in joins[0].input if i != out) if joins else image.name
        added.append(helper.make_node("Shape", [target], [f"_any_size_{k}"], start=2, end=4))
        sizes.input[1] = f"_any_size_{k}"
    g.node.extend(added)  # onnxruntime orders the nodes itself
    return model.SerializeToString()


def scaled(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) with the longer side `side`, the aspect ratio kept (at least 1 px)."""
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))
