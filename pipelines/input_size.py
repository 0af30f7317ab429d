"""Running a model at another input size than the one its export pins.

Fully convolutional models (U2-Net, IS-Net, MediaPipe's selfie model) accept other sizes, but
exports often pin the trained one: on the image input, and (IMG.LY's IS-Net, traced from
PyTorch's `interpolate(src, size=tar.shape[2:])`) as a constant target size of each decoder
Resize. `any_size` rewrites such a graph so that each of those Resizes takes its size from the
tensor its result is concatenated with (or from the image input, where it is concatenated with
nothing: the side outputs), and the image input takes any height and width. A pool's
`input_size` option (serve_app/config.py) runs a model that way (`resized` gives the spec its
callers and the replica resize images for); docs/benchmarks.md ("Input size against quality")
has what each size trades.

Channels-first (NCHW) float graphs only: an int8 build's sizes were folded into constants when
it was quantised, and channels-last graphs keep their spatial dims elsewhere; both are refused.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipelines.catalog import ModelSpec


def resized(spec: ModelSpec, side: int | None) -> ModelSpec:
    """`spec` with its input's longer side `side` (aspect kept), or as it is for None."""
    if side is None:
        return spec
    pre = spec.preprocess
    if pre.layout != "nchw":
        raise ValueError(f"model {spec.id!r}: input_size needs a channels-first (nchw) model")
    scale = side / max(pre.height, pre.width)
    height, width = max(1, round(pre.height * scale)), max(1, round(pre.width * scale))
    return spec.model_copy(update={"preprocess": pre.model_copy(
        update={"height": height, "width": width})})


def any_size(graph: str | Path | bytes, not_image: Collection[str] = ()) -> bytes:
    """The serialized graph (a file, or a serialized one) with its image input (the 4-D input
    not named in `not_image`) and its pinned Resize sizes freed."""
    model = onnx.load_from_string(graph) if isinstance(graph, bytes) else onnx.load(str(graph))
    g = model.graph
    image = next(v for v in g.input if len(v.type.tensor_type.shape.dim) == 4
                 and v.name not in not_image)
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
    # Shape(start, end) needs opset 15: Shape then Slice works from opset 10 on
    g.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), name)
                          for name, v in (("_any_size_from", [2]), ("_any_size_to", [4]))])
    rewritten: set[str] = set()
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
        # the tensor it is joined with (never another rewritten Resize: that would be a cycle)
        others = [i for i in joins[0].input if i != out and i not in rewritten] if joins else []
        target = others[0] if others else image.name
        rewritten.add(out)
        added += [helper.make_node("Shape", [target], [f"_any_size_shape_{k}"]),
                  helper.make_node("Slice", [f"_any_size_shape_{k}", "_any_size_from",
                                             "_any_size_to"], [f"_any_size_{k}"])]
        sizes.input[1] = f"_any_size_{k}"
    g.node.extend(added)  # onnxruntime orders the nodes itself
    return model.SerializeToString()
