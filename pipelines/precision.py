"""The precision a replica runs its graph in: fp16 copies for GPUs (made in memory when a
replica starts), and int8 builds on CPUs where one passed the quality gate
(`pipelines.quantize`, `Weights.int8`, whose builder widens float16 graphs: `float32_graph`).

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
from onnx import TensorProto, numpy_helper, version_converter

PRECISIONS = ("auto", "fp32", "fp16", "int8")
MIN_OPSET = 13  # float32_graph raises older graphs to it (per-channel int8 needs it)
# Providers on which `auto` means fp16 (fp16 on onnxruntime's CPU provider is no faster).
HALF_PRECISION_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider",
                            "TensorrtExecutionProvider")


def resolve_precision(precision: str, provider: str, int8_available: bool = False) -> str:
    """`auto` -> fp16 on a GPU provider; elsewhere int8 where a verified int8 build passed the
    quality gate (`int8_available`), else fp32. fp32/fp16 are taken as given; int8 only where
    such a build exists."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "int8" and not int8_available:
        raise ValueError("precision int8: this model has no verified int8 build that passed the "
                         "quality gate (`bgremove models quantize`, docs/models.md)")
    if precision == "auto":
        if provider in HALF_PRECISION_PROVIDERS:
            return "fp16"
        return "int8" if int8_available else "fp32"
    return precision


def fold_fp16_storage(model: onnx.ModelProto) -> int:
    """Replace `Cast(float16 initializer -> float32)` nodes by float32 initializers, in place.

    Returns how many were folded. A graph without such casts is left unchanged; so is a cast
    whose source is also a graph input (old IR versions list weights there: feedable values).
    """
    graph = model.graph
    inputs = {i.name for i in graph.input}
    inits = {init.name: init for init in graph.initializer}
    kept, folded, sources = [], [], set()
    for node in graph.node:
        source = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if (source is not None and source.name not in inputs
                and source.data_type == TensorProto.FLOAT16 and to == TensorProto.FLOAT):
            array = numpy_helper.to_array(source).astype(np.float32)
            folded.append(numpy_helper.from_array(array, node.output[0]))
            sources.add(source.name)
        else:
            kept.append(node)
    if not folded:
        return 0
    del graph.node[:]
    graph.node.extend(kept)
    # A source stays when anything else still reads it (another node, a subgraph, an output).
    still_read = _names_read(graph)
    initializers = [i for i in graph.initializer
                    if i.name not in sources or i.name in still_read] + folded
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return len(folded)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _names_read(sub)
    return names


def half_precision(path: str | Path) -> bytes:
    """The serialized fp16 version of the ONNX graph at `path` (float32 inputs and outputs)."""
    from onnxconverter_common import float16  # imported only where fp16 is asked for

    model = onnx.load(str(path))
    fold_fp16_storage(model)
    with warnings.catch_warnings():  # one line per weight below fp16's range: clamped, fine
        warnings.simplefilter("ignore", UserWarning)
        # Values beyond fp16's range are clamped to its largest finite value (the converter's
        # default clamps at 1e4, which would change constants between 1e4 and 65504).
        half = float16.convert_float_to_float16(model, keep_io_types=True,
                                                check_fp16_ready=False, max_finite_val=65504.0)
    return half.SerializeToString()


def _to_float32(tensor: onnx.TensorProto) -> None:
    if tensor.data_type == TensorProto.FLOAT16:
        array = numpy_helper.to_array(tensor).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def float32_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of `model`: float16 weights and constants widened, casts to float16 made
    casts to float32 and then dropped where they no longer change anything, opset raised to
    `MIN_OPSET` where it is lower."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for init in graph.initializer:
        _to_float32(init)
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            if attr.HasField("t"):
                _to_float32(attr.t)
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    _drop_float_casts(model)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        model = version_converter.convert_version(model, MIN_OPSET)
    return model


def _drop_float_casts(model: onnx.ModelProto) -> None:
    """Remove `Cast(to=float)` nodes whose input is already float (all of them, once a float16
    graph is widened); a cast that writes a graph output stays (it names that output)."""
    graph = model.graph
    del graph.value_info[:]  # stale after widening
    inferred = onnx.shape_inference.infer_shapes(model).graph
    floats = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    floats |= {v.name for v in (*inferred.input, *inferred.value_info)
               if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if (node.op_type == "Cast" and to == TensorProto.FLOAT and node.input[0] in floats
                and node.output[0] not in outputs):
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            while name in alias:
                name = alias[name]
            node.input[i] = name
    del graph.node[:]
    graph.node.extend(kept)
