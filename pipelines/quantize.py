"""Int8 copies of ONNX segmentation graphs for CPU replicas, built from calibration photos.

ONNX Runtime's static QDQ quantisation (int8 weights per output channel, uint8 activations
per tensor, MinMax ranges over the calibration inputs) does the work. What is ours is choosing
what stays in float, by measurement rather than by guessing: an activation tensor is quantised
with one scale for all its channels, so a tensor whose loudest channel peaks far above the
others (u2netp's last decoder stage: one channel at 228 where the median channel peaks at 12)
loses every quiet channel to rounding. `channel_peaks` runs the float graph over calibration
inputs and records each 4-D tensor's per-channel absolute peak; every node that reads or writes
a tensor whose max/median peak ratio exceeds `imbalance_limit` stays in float. On u2netp that
is 5 nodes of 371, and it is the difference between masks that agree with the float model at
IoU 0.61 and masks as good as the float model's (docs/benchmarks.md, int8 table).

Graphs stored or computed in float16 (IMG.LY's IS-Net) are first turned into float32 graphs
(`precision.float32_graph`).

The output is a pure function of the float file, the calibration inputs (in order) and the
onnxruntime version: building twice gives the same bytes, which is how a catalog can pin the
sha256 of a verified build (`Weights.int8`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from pipelines.catalog import ModelSpec
from pipelines.precision import float32_graph
from pipelines.segmenter import preprocess

Feeds = dict[str, np.ndarray]
IMBALANCE_LIMIT = 12.0


@dataclass(frozen=True)
class QuantizeReport:
    nodes: int  # in the float graph
    kept_float: tuple[str, ...]  # nodes left unquantised (imbalanced tensors)
    calibration_inputs: int


def channel_peaks(model: onnx.ModelProto, feeds: Iterable[Feeds]) -> dict[str, np.ndarray]:
    """{tensor: per-channel absolute peak over `feeds`} for every 4-D float tensor of `model`
    (NCHW: channel axis 1), reduced inside the graph so that no activation leaves it whole."""
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    rank4 = {v.name for v in (*inferred.graph.value_info, *inferred.graph.output)
             if v.type.tensor_type.elem_type == TensorProto.FLOAT
             and len(v.type.tensor_type.shape.dim) == 4}
    names = [o for n in model.graph.node for o in n.output if o in rank4]
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    opset = max(o.version for o in probe.opset_import if o.domain in ("", "ai.onnx"))
    axes = np.array([0, 2, 3], np.int64)
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        probe.graph.initializer.append(numpy_helper.from_array(axes, "_peak_axes"))
    del probe.graph.output[:]
    for name in names:
        probe.graph.node.append(helper.make_node("Abs", [name], [f"{name}_abs"]))
        if opset >= 18:
            probe.graph.node.append(helper.make_node(
                "ReduceMax", [f"{name}_abs", "_peak_axes"], [f"{name}_peak"], keepdims=0))
        else:
            probe.graph.node.append(helper.make_node(
                "ReduceMax", [f"{name}_abs"], [f"{name}_peak"], axes=list(axes), keepdims=0))
        probe.graph.output.append(helper.make_tensor_value_info(f"{name}_peak", TensorProto.FLOAT,
                                                                None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    peaks: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, peak in zip(names, session.run([f"{n}_peak" for n in names], feed)):
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def imbalanced(peaks: dict[str, np.ndarray], limit: float = IMBALANCE_LIMIT) -> set[str]:
    """Tensors whose loudest channel peaks above `limit` times their median channel."""
    return {name for name, p in peaks.items()
            if p.size > 1 and float(p.max()) > limit * max(float(np.median(p)), 1e-9)}


def nodes_touching(model: onnx.ModelProto, tensors: set[str]) -> list[str]:
    return [n.name for n in model.graph.node if tensors & (set(n.input) | set(n.output))]


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name (exclusions are by name; some exporters leave names empty
    or repeat them, which onnxruntime refuses once the graph is rewritten)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}_{i}"
        seen.add(node.name)
    return model


def quantize_int8(float_path: str | Path, out_path: str | Path,
                  feeds: Callable[[], Iterator[Feeds]], *,
                  imbalance_limit: float = IMBALANCE_LIMIT) -> QuantizeReport:
    """Write the int8 (QDQ) copy of the graph at `float_path` to `out_path`.

    `feeds()` yields the calibration inputs (model-ready tensors, the same sequence on every
    call: it is read twice, once for the channel peaks and once for the ranges)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = feeds()
            self.count = 0

        def get_next(self) -> Feeds | None:
            feed = next(self._it, None)
            self.count += feed is not None
            return feed

    with tempfile.TemporaryDirectory(prefix="bgremove-int8-") as tmp:
        widened, prepared = Path(tmp) / "float32.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(_named(float32_graph(onnx.load(str(float_path)))), str(widened))
        quant_pre_process(str(widened), str(prepared), skip_symbolic_shape=True)
        model = _named(onnx.load(str(prepared)))
        onnx.save(model, str(prepared))
        kept = nodes_touching(model, imbalanced(channel_peaks(model, feeds()), imbalance_limit))
        reader = _Reader()
        quantize_static(str(prepared), str(out_path), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=kept)
    return QuantizeReport(len(model.graph.node), tuple(kept), reader.count)


def calibration_images(folder: str | Path) -> list[Path]:
    """The PNG/JPEG/WebP files of `folder`, in name order (the order is part of the build)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})


def build_int8(spec: ModelSpec, float_path: str | Path, out_path: str | Path,
               images: Sequence[Path]) -> QuantizeReport:
    """The int8 build of a catalog model, calibrated on `images` preprocessed as the model
    expects them (its `preprocess` and extra inputs), with the catalog's imbalance limit."""
    graph = onnx.load(str(float_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    extra = {name: np.full(x.shape, x.value, np.float32)
             for name, x in spec.preprocess.extra_inputs.items()}
    (image_input,) = [i.name for i in graph.input if i.name not in weights and i.name not in extra]

    def feeds() -> Iterator[Feeds]:
        for path in images:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
            yield {image_input: preprocess(rgb, spec.preprocess)[None], **extra}

    limit = spec.weights.int8.imbalance_limit if spec.weights.int8 else IMBALANCE_LIMIT
    return quantize_int8(float_path, out_path, feeds, imbalance_limit=limit)
