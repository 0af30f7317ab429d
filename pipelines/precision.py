"""Half-precision copies of ONNX segmentation graphs, made in memory when a replica starts.

On a GPU, fp16 halves the memory traffic of every convolution and runs on tensor cores; the
graph keeps float32 inputs and outputs (`keep_io_types`), so preprocessing and postprocessing
do not change. The conversion is onnxconverter-common's; what is ours is undoing "fp16 storage"
exports first: graphs whose weights are stored as float16 and cast to float32 on load (the
converter would otherwise produce casts of the wrong type). onnxruntime's CPU provider runs the
same fp16 graph (slowly), which is how CI checks what a GPU replica would compute.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

PRECISIONS = ("auto", "fp32", "fp16")
# Providers on which `auto` means fp16 (fp16 on onnxruntime's CPU provider is no faster).
HALF_PRECISION_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider",
                            "TensorrtExecutionProvider")


def resolve_precision(precision: str, provider: str) -> str:
    """`auto` -> fp16 on a GPU provider, fp32 elsewhere; fp32/fp16 are taken as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "auto":
        return "fp16" if provider in HALF_PRECISION_PROVIDERS else "fp32"
    return precision


def fold_fp16_storage(model: onnx.ModelProto) -> int:
    """Replace `Cast(float16 initializer -> float32)` nodes by float32 initializers, in place.

    Returns how many were folded. A graph without such casts is left unchanged.
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    kept, folded = [], []
    for node in graph.node:
        source = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if source is not None and source.data_type == TensorProto.FLOAT16 and to == TensorProto.FLOAT:
            array = numpy_helper.to_array(source).astype(np.float32)
            folded.append(numpy_helper.from_array(array, node.output[0]))
        else:
            kept.append(node)
    if not folded:
        return 0
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    initializers = [i for i in graph.initializer if i.name in used] + folded
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return len(folded)


def half_precision(path: str | Path) -> bytes:
    """The serialized fp16 version of the ONNX graph at `path` (float32 inputs and outputs)."""
    from onnxconverter_common import float16  # imported only where fp16 is asked for

    model = onnx.load(str(path))
    fold_fp16_storage(model)
    with warnings.catch_warnings():  # one line per weight below fp16's range: clamped, fine
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(model, keep_io_types=True,
                                                check_fp16_ready=False)
    return half.SerializeToString()
