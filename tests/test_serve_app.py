"""Integration: the real Ray Serve app, started once per session, exercised over HTTP and handles."""

from __future__ import annotations

import io
import json
import os
import re
import time

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import InvalidImage
from pipelines.images import TOO_LARGE_MESSAGE

from conftest import REFERENCE, disk_image, media, png_bytes
from serve_harness import APP, UPLOAD_LIMIT

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from serve_app.builder import build_app  # noqa: E402
from serve_app.schemas import ImageJob, ImageResult  # noqa: E402

pytestmark = pytest.mark.serve


def post(client, effect: str, data: bytes, **form):
    return client.post(f"/image/{effect}/v1", files={"image": ("in.png", data, "image/png")},
                       data={k: str(v) for k, v in form.items()})


def as_array(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    assert resp.headers["cache-control"] == "no-cache"
    return np.asarray(Image.open(io.BytesIO(resp.content)))


# ---- Image API v1 -------------------------------------------------------------------------
def test_matte_returns_full_resolution_cutout(client):
    img = disk_image(300, 200)
    out = as_array(post(client, "matte", png_bytes(img)))
    assert out.shape == (200, 300, 4)
    assert out[100, 150, 3] > 240 and out[5, 5, 3] < 10  # subject opaque, corner transparent
    np.testing.assert_array_equal(out[100, 150, :3], img[100, 150])


@pytest.mark.parametrize("effect, form, channels", [
    ("blur", {"blur_strength": 8}, 3),
    ("color", {"bg_color": "0,0,255"}, 3),
    ("gradient", {"gradient_start": "#ff0000", "gradient_end": "#00ff00", "gradient_angle": 90}, 3),
    ("shadow", {"shadow_offset_x": 10, "shadow_offset_y": 6, "shadow_opacity": 0.7}, 4),
    ("shadow", {"bg_color": "white"}, 3),
])
def test_effects(client, effect, form, channels):
    out = as_array(post(client, effect, png_bytes(disk_image(300, 200)), **form))
    assert out.shape == (200, 300, channels)
    if effect == "color":
        np.testing.assert_allclose(out[3, 3], (0, 0, 255), atol=3)  # tiny model: mask ~0.01 there
    if effect == "gradient":
        assert out[3, 2, 0] > 200 and out[3, -3, 1] > 200  # red on the left, green on the right
    if effect == "shadow" and channels == 4:
        assert out[150, 230, 3] > 10 and out[10, 10, 3] < 5  # shadow below-right, corner clear


def test_input_alpha_is_kept(client):
    rgba = np.dstack([disk_image(120, 80), np.zeros((80, 120), np.uint8)])
    rgba[:, :60, 3] = 255  # left half visible only
    out = as_array(post(client, "matte", png_bytes(rgba)))
    assert out[40, 70, 3] == 0 and out[40, 50, 3] > 200


def test_exif_orientation_over_http(client):
    im = Image.fromarray(disk_image(160, 80))
    exif = im.getexif()
    exif[0x0112] = 6
    out = as_array(post(client, "matte", png_bytes(im, "JPEG", exif=exif.tobytes())))
    assert out.shape[:2] == (160, 80)


def test_too_large_gives_the_documented_400(client):
    resp = post(client, "matte", png_bytes(np.zeros((2049, 2048, 3), np.uint8)))
    assert resp.status_code == 400
    assert resp.json() == {"message": TOO_LARGE_MESSAGE}


@pytest.mark.parametrize("data, status, text", [
    (b"", 400, "Empty image file"),
    (b"%PDF-1.4 not an image", 400, "not a recognised image format"),
    (png_bytes(disk_image())[:300], 400, "corrupt or truncated"),
])
def test_bad_uploads(client, data, status, text):
    resp = post(client, "blur", data)
    assert resp.status_code == status and text in resp.json()["message"]


def test_decompression_bomb(client):
    from test_images import _png_claiming

    resp = post(client, "matte", _png_claiming(60_000, 60_000))
    assert resp.status_code == 400 and resp.json() == {"message": TOO_LARGE_MESSAGE}


def test_upload_over_byte_limit(client):
    resp = post(client, "matte", os.urandom(UPLOAD_LIMIT + 200_000))
    assert resp.status_code == 413 and "larger than" in resp.json()["message"]


@pytest.mark.parametrize("effect, form, status, text", [
    ("matte", {"model": "nope"}, 400, "Unknown model 'nope'"),
    ("matte", {"model": "u2net"}, 503, "bgremove models pull u2net"),
    ("matte", {"model": "silueta"}, 503, "not enabled"),
    ("blur", {"blur_strength": 0}, 422, "blur_strength"),
    ("blur", {"blur_strength": "strong"}, 422, "blur_strength"),
    ("color", {"bg_color": "bluish"}, 422, "invalid colour 'bluish'"),
    ("shadow", {"shadow_opacity": 1.5}, 422, "shadow_opacity"),
])
def test_bad_parameters(client, effect, form, status, text):
    resp = post(client, effect, png_bytes(disk_image()), **form)
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"message"} and text in resp.json()["message"]


def test_missing_file_field(client):
    resp = client.post("/image/matte/v1", data={"model": "tiny"})
    assert resp.status_code == 422 and resp.json()["message"].startswith("Invalid request data")


def test_real_person_model_over_http(client, real_models):
    resp = post(client, "matte", media("astronaut").read_bytes(), model="mediapipe-selfie")
    out = as_array(resp)
    ref = np.asarray(Image.open(REFERENCE / "mediapipe_selfie_segmentation_256x256__astronaut_mask.png"))
    a, b = out[..., 3] > 127, ref > 127
    assert (a & b).sum() / (a | b).sum() >= 0.95
    assert resp.headers["x-model"] == "mediapipe-selfie"


# ---- service endpoints ----------------------------------------------------------------------
def test_health_reports_missing_weights(client):
    body = client.get("/health").json()
    assert body["status"] == "degraded"  # u2net's weights are not here
    assert body["models"]["u2net"]["status"] == "missing"
    assert "bgremove models pull u2net" in body["models"]["u2net"]["detail"]
    # /health is public: no folder of this machine in it, anywhere
    import os
    assert os.environ["BGR_MODELS_DIR"] not in client.get("/health").text
    assert "/" not in body["models"]["u2net"]["detail"].replace("bgremove models", "")
    assert "birefnet-portrait" not in body["models"]
    assert body["models"]["tiny"] == {"status": "loaded", "pool": "light", "replicas": 2,
                                      "detail": None}
    assert body["services"]["tiny"] == "loaded" and body["services"]["u2net"] == "missing"
    assert body["version"]


def test_models_listing(client):
    listing = {m["id"]: m for m in client.get("/models").json()}
    assert listing["tiny"]["available"] and not listing["u2net"]["available"]
    # every model's licence, and what it asks of an operator
    assert listing["tiny"]["license"] == "MIT" and listing["tiny"]["license_terms"] == "permissive"
    isnet = listing["isnet-imgly-medium"]
    assert isnet["license"] == "AGPL-3.0" and isnet["license_terms"] == "copyleft"
    assert all(m["license"] for m in listing.values())


def test_openapi_documents_the_image_api(client):
    spec = client.get("/openapi.json").json()
    for effect in ("matte", "blur", "color", "gradient", "shadow"):
        assert f"/image/{effect}/v1" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_openapi_shows_the_output_options_with_their_ranges(client):
    spec = client.get("/openapi.json").json()

    def resolved(schema: dict) -> dict:
        """The schema's properties, through $ref and allOf (a form model beside the file)."""
        if "$ref" in schema:
            return resolved(spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
        fields = dict(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            fields |= resolved(part)
        return fields

    def properties(path: str, content_type: str) -> dict:
        body = spec["paths"][path]["post"]["requestBody"]["content"][content_type]
        return resolved(body["schema"])

    for path, content_type in (("/image/matte/v1", "multipart/form-data"),
                               ("/image/hd/submit/v1", "multipart/form-data")):
        fields = properties(path, content_type)
        assert {"output", "crop", "crop_margin", "max_size", "format", "refine",
                "clean_mask"} <= set(fields), path
        size = next(s for s in fields["max_size"]["anyOf"] if s["type"] == "integer")
        assert (size["minimum"], size["maximum"]) == (16, 20000)
        assert fields["refine"]["enum"] == ["none", "matting"]
    jobs = properties("/v1/jobs", "application/json")  # a body the route reads itself
    assert {"output", "crop", "crop_margin", "max_size", "refine", "clean_mask",
            "output_format", "image_url"} <= set(jobs)
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert refs and refs <= set(spec["components"]["schemas"])  # every reference resolves


# ---- Python handle API ----------------------------------------------------------------------
def test_handle_api_for_data_teams(base_url):
    handle = serve.get_app_handle(APP)
    job = ImageJob(image=png_bytes(disk_image(120, 80)), effect="color", options={"bg_color": "#00ff00"})
    result = handle.process.remote(job).result(timeout_s=60)
    assert isinstance(result, ImageResult)
    assert (result.width, result.height, result.model) == (120, 80, "tiny")
    out = np.asarray(Image.open(io.BytesIO(result.png)))
    np.testing.assert_allclose(out[2, 2], (0, 255, 0), atol=3)
    with pytest.raises(InvalidImage):
        handle.process.remote(ImageJob(image=b"junk")).result(timeout_s=60)


def test_model_deployment_handle_batches_concurrent_calls(base_url):
    handle = serve.get_deployment_handle("tiny", app_name=APP)
    images = [disk_image(64 + i, 48) for i in range(8)]
    masks = [r.result(timeout_s=60) for r in [handle.predict.remote(im) for im in images]]
    for im, mask in zip(images, masks):
        assert mask.shape == im.shape[:2] and mask[24, (64 + 0) // 2] > 200


def test_unsatisfiable_resources_fail_fast(base_url):
    started = time.monotonic()
    with pytest.raises(ValueError, match="no node has that"):
        build_app({"models": ["tiny"],
                   "model_overrides": {"tiny": {"ray_actor_options": {"num_cpus": 1, "num_gpus": 1}}}})
    assert time.monotonic() - started < 10
