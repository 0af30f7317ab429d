"""Int8 builds (pipelines/quantize.py), float32 copies of float16 graphs, and the quality gate
that decides whether an int8 build is served (catalog `weights.int8`, `weights.find_int8`)."""

from __future__ import annotations

import datetime
import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from pipelines.catalog import Int8Build, Int8Gate, load_catalog
from pipelines.precision import float32_graph, resolve_precision
from pipelines.quantize import channel_peaks, imbalanced, quantize_int8
from pipelines.segmenter import OnnxSegmenter
from pipelines.weights import find_int8
from tests.conftest import media

SIZE = 32


def _conv_model(path: Path, loud: float = 40.0) -> Path:
    """conv3x3(3->8) + relu -> conv1x1(8->1) -> sigmoid, where channel 0 of the first conv is
    `loud` times louder than the others: the imbalance the quantiser must find."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w1[0] *= loud
    w2 = rng.normal(0, 0.5, (1, 8, 1, 1)).astype(np.float32)
    w2[0, 0] /= loud  # the loud channel matters as much as the others downstream
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, SIZE, SIZE])
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Sigmoid", ["c2"], ["y"], name="sigmoid")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(1, np.float32), "b2")]
    model = helper.make_model(helper.make_graph(nodes, "conv", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _has_float16(model: onnx.ModelProto) -> bool:
    """Whether any weight, constant or cast of `model` is float16."""
    graph = model.graph
    return (any(i.data_type == TensorProto.FLOAT16 for i in graph.initializer)
            or any((a.name == "to" and a.i == TensorProto.FLOAT16)
                   or (a.HasField("t") and a.t.data_type == TensorProto.FLOAT16)
                   for n in graph.node for a in n.attribute))


def _feeds(n: int = 12):
    rng = np.random.default_rng(1)
    batches = [{"x": rng.random((1, 3, SIZE, SIZE), dtype=np.float32)} for _ in range(n)]
    return lambda: iter(batches)


def _run(path: Path | bytes, feed) -> np.ndarray:
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_the_loud_channel_is_found_and_kept_in_float(tmp_path):
    model_path = _conv_model(tmp_path / "conv.onnx")
    peaks = channel_peaks(onnx.load(model_path), _feeds()())
    assert {"c1", "r1"} <= imbalanced(peaks)  # channel 0 peaks ~40x the median channel
    assert "c2" not in imbalanced(peaks)  # one channel: nothing to compare
    report = quantize_int8(model_path, tmp_path / "int8.onnx", _feeds())
    assert {"conv1", "relu1", "conv2"} <= set(report.kept_float)  # read or write r1/c1
    assert report.calibration_inputs == 12


def test_keeping_the_imbalanced_nodes_in_float_is_what_keeps_the_output(tmp_path):
    model_path = _conv_model(tmp_path / "conv.onnx")
    feed = {"x": np.random.default_rng(7).random((1, 3, SIZE, SIZE), dtype=np.float32)}
    want = _run(model_path, feed)
    quantize_int8(model_path, tmp_path / "measured.onnx", _feeds())
    quantize_int8(model_path, tmp_path / "naive.onnx", _feeds(), imbalance_limit=1e9)
    measured = np.abs(_run(tmp_path / "measured.onnx", feed) - want).mean()
    naive = np.abs(_run(tmp_path / "naive.onnx", feed) - want).mean()
    assert measured < 0.01 and naive > 2 * measured


def test_the_same_inputs_give_the_same_bytes(tmp_path):
    model_path = _conv_model(tmp_path / "conv.onnx")
    quantize_int8(model_path, tmp_path / "a.onnx", _feeds())
    quantize_int8(model_path, tmp_path / "b.onnx", _feeds())
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    graph = onnx.load(tmp_path / "a.onnx").graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # it is quantised


def test_a_float16_graph_is_widened_to_float32(tmp_path):
    from onnxconverter_common import float16

    model_path = _conv_model(tmp_path / "conv.onnx")
    half = float16.convert_float_to_float16(onnx.load(model_path), keep_io_types=True)
    onnx.save(half, tmp_path / "half.onnx")
    assert _has_float16(half)
    wide = float32_graph(half)
    assert not _has_float16(wide)
    casts = [n for n in wide.graph.node if n.op_type == "Cast"]  # float -> float: dropped,
    assert [c.output[0] for c in casts] == ["y"]  # but the one that names the graph's output
    feed = _feeds()().__next__()
    np.testing.assert_allclose(_run(wide.SerializeToString(), feed), _run(model_path, feed),
                               atol=2e-3)


def test_precision_auto_on_cpu_is_int8_only_where_a_build_is_given():
    assert resolve_precision("auto", "CPUExecutionProvider", int8_available=True) == "int8"
    assert resolve_precision("auto", "CPUExecutionProvider") == "fp32"
    assert resolve_precision("auto", "CUDAExecutionProvider", int8_available=True) == "fp16"
    assert resolve_precision("fp32", "CPUExecutionProvider", int8_available=True) == "fp32"
    with pytest.raises(ValueError, match="no verified int8 build"):
        resolve_precision("int8", "CPUExecutionProvider")


def _spec_with_build(sha256: str, sad: float, iou: float):
    spec = load_catalog().get("u2netp")
    build = Int8Build(sha256=sha256, gate=Int8Gate(sad_change_pct=sad, iou_change=iou,
                                                   measured=datetime.date(2026, 12, 7)))
    return spec.model_copy(update={"weights": spec.weights.model_copy(update={"int8": build})})


def test_only_the_verified_build_inside_its_gate_is_served(tmp_path):
    built = tmp_path / "u2netp.int8.onnx"
    built.write_bytes(b"an int8 build")
    digest = hashlib.sha256(b"an int8 build").hexdigest()
    assert find_int8(_spec_with_build(digest, -1.2, 0.003), [tmp_path]) == built
    # the gate: SAD at most 3 % worse and IoU at most 0.01 lower than the float model
    assert find_int8(_spec_with_build(digest, 3.5, 0.003), [tmp_path]) is None
    assert find_int8(_spec_with_build(digest, -1.0, -0.02), [tmp_path]) is None
    # other bytes than the measured ones (another calibration set, another onnxruntime)
    assert find_int8(_spec_with_build("0" * 64, -1.2, 0.003), [tmp_path]) is None
    assert find_int8(load_catalog().get("mediapipe-selfie"), [tmp_path]) is None  # none declared


def test_quantize_command_builds_real_u2netp_reproducibly_and_serves_only_the_verified_build(
        real_models, tmp_path, monkeypatch, capsys):
    """`bgremove models quantize` on the real u2netp with four scikit-image photos: the same
    photos give the same file twice; it is not the catalog's verified build (that one is
    calibrated on bench/calibration.json), so it is not served, and the segmenter says fp32."""
    from serve_app.cli import main
    from serve_app.core.settings import get_settings

    spec = load_catalog().get("u2netp")
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(real_models / spec.weights.file, models / spec.weights.file)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "motorcycle_left"):
        Image.open(media(name)).convert("RGB").save(photos / f"{name}.png")
    monkeypatch.setenv("BGR_MODELS_DIR", str(models))
    get_settings.cache_clear()
    try:
        digests = []
        for _ in range(2):
            assert main(["models", "quantize", "u2netp", "--calibration", str(photos)]) == 0
            digests.append(hashlib.sha256((models / "u2netp.int8.onnx").read_bytes()).hexdigest())
        out = capsys.readouterr().out
    finally:
        get_settings.cache_clear()
    assert digests[0] == digests[1]
    assert "4 calibration images" in out
    if spec.weights.int8 is not None:
        assert spec.weights.int8.sha256 != digests[0]
        assert "not the verified build" in out
    assert find_int8(spec, [models]) is None
    seg = OnnxSegmenter(spec, models / spec.weights.file)
    assert seg.precision == "fp32"
    # the build itself runs, and on a photo it agrees with the float model
    rgb = np.asarray(Image.open(media("astronaut")).convert("RGB"))
    int8 = OnnxSegmenter(spec, models / spec.weights.file, precision="int8",
                         int8_path=models / "u2netp.int8.onnx")
    assert int8.precision == "int8"
    a, b = seg.predict(rgb) > 127, int8.predict(rgb) > 127
    assert (a & b).sum() / max((a | b).sum(), 1) > 0.9
