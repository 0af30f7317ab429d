import numpy as np
import pytest

from pipelines.catalog import ModelSpec, Postprocess, Preprocess
from pipelines.errors import ModelFileMissing
from pipelines.segmenter import OnnxSegmenter, postprocess, preprocess

from conftest import TINY_FAMILY, disk_image


def tiny_spec() -> ModelSpec:
    return ModelSpec.model_validate({
        "id": "tiny", "name": "Tiny", "family": "tiny", "tier": "light", **TINY_FAMILY,
        "weights": {"file": "tiny.onnx", "license": "MIT", "source": {"kind": "local"}},
    })


def test_preprocess_layout_channel_order_and_normalisation():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 128, 250
    p = Preprocess(height=4, width=4, channel_order="bgr", layout="nchw", scale="unit",
                   mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    x = preprocess(rgb, p)
    assert x.shape == (3, 4, 4) and x.dtype == np.float32
    # channel 0 is blue after BGR reordering; its std is the first one
    np.testing.assert_allclose(x[0, 0, 0], (250 / 255 - 0.5) / 0.5, rtol=1e-4)
    np.testing.assert_allclose(x[1, 0, 0], (128 / 255 - 0.5) / 0.25, rtol=1e-4)
    np.testing.assert_allclose(x[2, 0, 0], (10 / 255 - 0.5) / 0.5, rtol=1e-4)
    nhwc = preprocess(rgb, p.model_copy(update={"layout": "nhwc"}))
    assert nhwc.shape == (4, 4, 3)


def test_preprocess_max_scale_and_post_divide():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    rgb[0, 0] = 200
    x = preprocess(rgb, Preprocess(height=2, width=2, scale="max"))
    assert x.max() == pytest.approx(1.0) and x.min() == pytest.approx(0.5)
    y = preprocess(rgb, Preprocess(height=2, width=2, scale="none", mean=(100, 100, 100),
                                   std=(2, 2, 2), post_divide=255.0))
    assert y[0, 0, 0] == pytest.approx(50 / 255) and y[0, 1, 1] == pytest.approx(0.0)


def test_postprocess_softmax_channel_and_minmax():
    logits = np.zeros((4, 4, 2), np.float32)
    logits[:2, :, 1] = 5.0  # top half: person
    mask = postprocess(logits, Postprocess(layout="nhwc", channel=1, activation="softmax"), (4, 4))
    assert mask[0, 0] > 250 and mask[3, 0] == 128  # softmax(0,0) = 0.5: 127.5, rounded
    flat = postprocess(np.full((1, 4, 4), 0.3, np.float32), Postprocess(normalize="minmax"), (8, 6))
    assert flat.shape == (6, 8) and flat.max() == 0  # uniform output: no NaN, empty mask
    raw = np.linspace(0.2, 0.4, 16, dtype=np.float32).reshape(1, 4, 4)
    stretched = postprocess(raw, Postprocess(normalize="minmax"), (4, 4))
    assert stretched.min() == 0 and stretched.max() == 255


def test_tiny_model_segments_the_bright_subject(tiny_model):
    seg = OnnxSegmenter(tiny_spec(), tiny_model)
    img = disk_image(96, 64)
    mask = seg.predict(img)
    assert mask.shape == (64, 96) and mask.dtype == np.uint8
    assert mask[32, 48] > 240  # centre of the ellipse
    assert mask[2, 2] < 10  # background corner


def test_batch_matches_single_images(tiny_model):
    seg = OnnxSegmenter(tiny_spec(), tiny_model)
    assert seg.dynamic_batch
    images = [disk_image(96, 64), disk_image(40, 50, fg=(250, 250, 250)), disk_image(33, 17)]
    batched = seg.predict_batch(images)
    for img, mask in zip(images, batched):
        np.testing.assert_array_equal(mask, seg.predict(img))


def test_missing_weights_fail_with_pull_hint(tmp_path):
    with pytest.raises(ModelFileMissing, match="bgremove models pull tiny"):
        OnnxSegmenter(tiny_spec(), tmp_path / "nope.onnx")


def test_solo_session_gives_the_same_masks(tiny_model):
    seg = OnnxSegmenter(tiny_spec(), tiny_model, intra_op_threads=1, solo_threads=2)
    assert seg.solo_session is not seg.session
    img = disk_image(96, 64)
    np.testing.assert_array_equal(seg.predict_batch([img], solo=True)[0], seg.predict(img))


# ---- half precision (the GPU backend's graph, run here by onnxruntime's CPU provider) ----------

def test_auto_precision_is_fp32_on_cpu_and_fp16_on_gpu_providers(tiny_model):
    from pipelines.precision import resolve_precision
    assert resolve_precision("auto", "CPUExecutionProvider") == "fp32"
    assert resolve_precision("auto", "CUDAExecutionProvider") == "fp16"
    assert resolve_precision("fp16", "CPUExecutionProvider") == "fp16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "CPUExecutionProvider")
    seg = OnnxSegmenter(tiny_spec(), tiny_model, providers=["CUDAExecutionProvider"])
    # no CUDA here: the CPU provider is chosen, and auto follows the provider actually used
    assert seg.providers == ["CPUExecutionProvider"] and seg.precision == "fp32"


def test_fp16_graph_computes_in_half_precision_and_matches_fp32(tiny_model):
    import onnx
    from onnx import TensorProto

    from pipelines.precision import half_precision
    half = onnx.load_from_string(half_precision(tiny_model))
    # float32 in and out, float16 inside
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(i.data_type == TensorProto.FLOAT16 for i in half.graph.initializer)

    fp32 = OnnxSegmenter(tiny_spec(), tiny_model, precision="fp32")
    fp16 = OnnxSegmenter(tiny_spec(), tiny_model, precision="fp16")
    assert fp16.precision == "fp16"
    images = [disk_image(96, 64), disk_image(40, 50, fg=(250, 250, 250))]
    for a, b in zip(fp32.predict_batch(images), fp16.predict_batch(images)):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 2  # fp16 rounding, not a different answer
        assert b[b.shape[0] // 2, b.shape[1] // 2] > 240


def test_fold_fp16_storage_turns_cast_weights_into_float32(tmp_path):
    """Exports that store weights as float16 and Cast them to float32 on load are folded first
    (the converter would otherwise emit casts of the wrong type)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pipelines.precision import fold_fp16_storage, half_precision
    w = numpy_helper.from_array(np.full((1,), 2.0, np.float16), "w16")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)

    folded = onnx.load(path)
    assert fold_fp16_storage(folded) == 1
    assert [n.op_type for n in folded.graph.node] == ["Mul"]
    assert [(i.name, i.data_type) for i in folded.graph.initializer] == [("w", TensorProto.FLOAT)]

    import onnxruntime as ort
    session = ort.InferenceSession(half_precision(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.array([[1.5]], np.float32)})[0]
    assert out.dtype == np.float32 and out[0, 0] == pytest.approx(3.0)


def test_fp16_keeps_large_constants_and_feedable_weights(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from pipelines.precision import fold_fp16_storage, half_precision

    def save(nodes, inputs, inits, name):
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        model = helper.make_model(helper.make_graph(nodes, "g", inputs, [y], initializer=inits),
                                  opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 8
        onnx.save(model, tmp_path / name)
        return tmp_path / name

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    big = save([helper.make_node("Add", ["x", "c"], ["y"])], [x],
               [numpy_helper.from_array(np.array([30000.0], np.float32), "c")], "big.onnx")
    session = ort.InferenceSession(half_precision(big), providers=["CPUExecutionProvider"])
    out = session.run(["y"], {"x": np.array([0.0], np.float32)})[0]
    assert out[0] == pytest.approx(30000.0, rel=1e-3)  # not clamped to the converter's 1e4

    # old IR versions list weights among the graph inputs (feedable): such a Cast stays
    w16 = helper.make_tensor_value_info("w16", TensorProto.FLOAT16, [1])
    feedable = save([helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
                     helper.make_node("Add", ["x", "w"], ["y"])], [x, w16],
                    [numpy_helper.from_array(np.array([2.0], np.float16), "w16")], "feed.onnx")
    model = onnx.load(feedable)
    assert fold_fp16_storage(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Cast", "Add"]


def test_memory_arena_off_gives_the_same_masks(tiny_model):
    """`cpu_memory_arena: false` (a pool option) changes where memory goes, not the result;
    with it on, a replica's sessions share one arena."""
    rgb = disk_image(90, 60)
    kept = OnnxSegmenter(tiny_spec(), tiny_model, solo_threads=2)
    freed = OnnxSegmenter(tiny_spec(), tiny_model, memory_arena=False)
    assert np.array_equal(kept.predict(rgb), freed.predict(rgb))
    assert np.array_equal(kept.predict_batch([rgb], solo=True)[0], kept.predict(rgb))


def pinned_size_model(path, side: int = 32):
    """A graph exported at `side` x `side` the way IMG.LY's IS-Net is (at opset 13): the image input pinned,
    and a decoder Resize whose target size is the constant trained size (Concat of the batch
    and channel dims with a Constant), its result concatenated with the full-size input."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, side, side])
    nodes = [
        helper.make_node("AveragePool", ["x"], ["low"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["low"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]),
        helper.make_node("Constant", [], ["hw"], value=helper.make_tensor(
            "hw", TensorProto.INT64, [2], [side, side])),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["low", "", "", "sizes"], ["up"], mode="linear"),
        helper.make_node("Concat", ["up", "x"], ["both"], axis=1),
        helper.make_node("ReduceMean", ["both"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["m", "half"], ["c"]),
        helper.make_node("Mul", ["c", "gain"], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["y"]),
    ]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
             helper.make_tensor("two", TensorProto.INT64, [1], [2]),
             helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
             helper.make_tensor("gain", TensorProto.FLOAT, [], [12.0])]
    # opset 13, as old exports (u2netp: 11) are: Shape has no start/end before opset 15
    model = helper.make_model(helper.make_graph(nodes, "pinned", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_a_pinned_graph_runs_at_another_size_once_freed(tmp_path):
    import onnxruntime as ort

    from pipelines.input_size import any_size

    path = pinned_size_model(tmp_path / "pinned.onnx")
    rng = np.random.default_rng(0)
    big = rng.random((1, 3, 48, 48), np.float32)
    pinned = ort.InferenceSession(str(path))
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type varies
        pinned.run(None, {"x": big})  # the constant size no longer matches the input
    freed = ort.InferenceSession(any_size(path))
    assert freed.run(None, {"x": big})[0].shape == (1, 1, 48, 48)
    small = rng.random((1, 3, 32, 32), np.float32)  # at the trained size: the same answer
    np.testing.assert_allclose(freed.run(None, {"x": small})[0],
                               pinned.run(None, {"x": small})[0], rtol=1e-6)


def test_input_size_runs_the_model_at_that_size(tmp_path):
    path = pinned_size_model(tmp_path / "tiny.onnx")
    spec = tiny_spec().model_copy(update={"preprocess": Preprocess(height=32, width=32)})
    at_catalog = OnnxSegmenter(spec, path)
    at_48 = OnnxSegmenter(spec, path, input_size=48)
    assert (at_48.spec.preprocess.height, at_48.spec.preprocess.width) == (48, 48)
    assert at_catalog.spec.preprocess.height == 32 and spec.preprocess.height == 32
    image = disk_image(96, 64)
    mask = at_48.predict(image)
    assert mask.shape == (64, 96)
    inside, outside = mask[32, 48], mask[2, 2]  # the bright ellipse is the subject
    assert inside > 200 and outside < 50
    # the model was fed 48 x 48: the mask differs from the 32 x 32 one only at the edges
    assert np.mean(np.abs(mask.astype(int) - at_catalog.predict(image).astype(int))) < 8


def test_input_size_runs_float_channels_first_graphs_only(tmp_path):
    from pipelines.input_size import resized

    path = pinned_size_model(tmp_path / "tiny.onnx")
    spec = tiny_spec().model_copy(update={"preprocess": Preprocess(height=32, width=32)})
    # an int8 build had its sizes folded into constants: auto runs the float graph instead,
    # and int8 asked for by name is refused
    auto = OnnxSegmenter(spec, path, int8_path=path, input_size=48)
    assert auto.precision == "fp32" and auto.spec.preprocess.height == 48
    with pytest.raises(ValueError, match="float graphs only"):
        OnnxSegmenter(spec, path, precision="int8", int8_path=path, input_size=48)
    landscape = Preprocess(height=144, width=256, layout="nhwc")
    with pytest.raises(ValueError, match="channels-first"):
        resized(spec.model_copy(update={"preprocess": landscape}), 128)
    wide = resized(spec.model_copy(update={"preprocess": Preprocess(height=144, width=256)}), 128)
    assert (wide.preprocess.height, wide.preprocess.width) == (72, 128)  # the aspect kept
