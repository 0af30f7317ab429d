"""Property-based fuzzing of the public endpoints against the real Ray Serve app: whatever the
body, form fields, JSON, ids or headers, the answer is never a 5xx and errors come in the
route family's documented shape."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import disk_image, png_bytes

pytestmark = pytest.mark.serve

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
PNG = png_bytes(disk_image(40, 30))
# A cut-out: transparent where the disk image is dark (what /image/generate/v1 wants).
RGBA = png_bytes(np.dstack([disk_image(40, 30), (disk_image(40, 30)[..., 0] > 128) * 255]
                           ).astype(np.uint8))

nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "../../etc/passwd", "..%2F..%2F", "\x00", "%00", "tiny",
                     "NaN", "inf", "-1", "1e309", "#zzz", "255,0", "256,0,0", "all",
                     "a" * 5000, "\u202e\u0000", "{}", "[]", "null"]),
)
numbers = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True))
json_scalars = st.one_of(st.none(), st.booleans(), numbers, nasty_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)


@st.composite
def image_bytes(draw) -> bytes:
    """Random bytes, or a real PNG truncated or with bytes flipped (decoders' worst inputs)."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "valid", "cutout"]))
    if kind == "random":
        return draw(st.binary(max_size=3000))
    if kind == "cutout":
        return RGBA
    data = bytearray(PNG)
    if kind == "truncated":
        return bytes(data[:draw(st.integers(0, len(data) - 1))])
    if kind == "flipped":
        for i in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


def assert_answered(resp) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        body = resp.json()
        assert isinstance(body, dict) and (
            # spec 000 (and its video 404: message + status), 001/002, 003
            set(body) in ({"message"}, {"detail"}, {"message", "status"})
            or set(body.get("error", {})) in (
                {"code", "message", "request_id"}, {"type", "message", "details"})), body


EFFECT_FIELDS = ["model", "blur_strength", "bg_color", "gradient_start", "gradient_end",
                 "gradient_angle", "shadow_offset_x", "shadow_offset_y", "shadow_blur",
                 "shadow_opacity", "shadow_color", "surprise", "points", "background_points",
                 "box", "prompt_mode", "output", "crop", "crop_margin", "max_size", "format",
                 "refine", "clean_mask"]
OUTPUT_VALUES = st.sampled_from(["rgba", "mask", "true", "false", "5%", "12", "png", "webp",
                                 "jpg", "matting", "none", "gif", "-3", "101%"])
BACKGROUND_FIELDS = ["scene", "scene_color", "scene_color_end", "seed", "shadow_opacity",
                     "light_wrap", "color_match", "prompt", "negative_prompt", "steps",
                     "guidance_scale", "width", "height", "points", "box"]


@FUZZ
@given(effect=st.sampled_from(["matte", "blur", "color", "gradient", "shadow"]),
       data=image_bytes(),
       form=st.dictionaries(st.sampled_from(EFFECT_FIELDS),
                            st.one_of(nasty_text, numbers.map(str), OUTPUT_VALUES), max_size=4),
       filename=nasty_text, content_type=st.sampled_from(
           ["image/png", "image/gif", "text/plain", "application/octet-stream", ""]))
def test_image_api(client, effect, data, form, filename, content_type):
    resp = client.post(f"/image/{effect}/v1", data=form,
                       files={"image": (filename or "x", io.BytesIO(data), content_type)})
    assert_answered(resp)


@FUZZ
@given(path=st.sampled_from(["/image/backdrop/v1", "/image/generate/v1"]), data=image_bytes(),
       form=st.dictionaries(st.sampled_from([*BACKGROUND_FIELDS, "output", "crop", "format"]),
                            st.one_of(nasty_text, numbers.map(str), OUTPUT_VALUES), max_size=4))
def test_background_apis(client, path, data, form):
    if path.endswith("generate/v1"):
        form = {**form, "steps": "1"}  # a diffusion step is enough to prove the wiring
    resp = client.post(path, data=form, files={"image": ("x.png", io.BytesIO(data), "image/png")})
    assert_answered(resp)


URLS = st.sampled_from(["http://127.0.0.1:1/x.png", "http://10.0.0.1/a.png", "file:///etc/passwd",
                        "gopher://x", "http://[::1]/", "http://169.254.169.254/latest",
                        "http://user:pw@127.0.0.1/", "ftp://127.0.0.1/", "not a url", ""])


@FUZZ
@given(path=st.sampled_from(["/remove-background", "/upscale", "/process", "/log-selection"]),
       body=st.one_of(
           json_values,
           st.fixed_dictionaries({}, optional={
               "image": st.one_of(nasty_text, image_bytes().map(
                   lambda b: __import__("base64").b64encode(b).decode())),
               "image_url": st.one_of(URLS, nasty_text),
               "include_models": st.one_of(json_values, st.lists(nasty_text, max_size=3)),
               "bg_models": st.lists(nasty_text, max_size=3),
               "output_format": nasty_text, "upscale_factor": json_scalars,
               "preserve_alpha": json_scalars, "job_id": nasty_text,
               "selected_model_id": nasty_text, "image_category": nasty_text,
               "notes": nasty_text})))
def test_shotgun_api(client, path, body):
    assert_answered(client.post(path, content=json.dumps(body, allow_nan=True),
                                headers={"content-type": "application/json"}))


@FUZZ
@given(body=st.one_of(json_values, st.fixed_dictionaries({}, optional={
           "image_url": URLS, "video_url": URLS, "upload_id": nasty_text,
           "model": json_scalars, "output_format": nasty_text, "auto_start": json_scalars,
           "background": json_values, "composition": json_values, "webhook_url": URLS,
           "webhook_secret": nasty_text, "text_prompt": nasty_text,
           # the output options (docs/output-options.md)
           "output": st.one_of(OUTPUT_VALUES, json_scalars), "crop": json_scalars,
           "crop_margin": st.one_of(OUTPUT_VALUES, json_scalars), "max_size": json_scalars,
           "refine": st.one_of(OUTPUT_VALUES, json_scalars), "clean_mask": json_scalars})),
       idempotency=st.one_of(st.none(), nasty_text.filter(  # what a client can send at all
           lambda s: s.isprintable() and s.isascii() and s.strip() == s)))
def test_jobs_api(client, body, idempotency):
    headers = {"content-type": "application/json"}
    if idempotency:
        headers["Idempotency-Key"] = idempotency
    resp = client.post("/v1/jobs", content=json.dumps(body, allow_nan=True), headers=headers)
    assert_answered(resp)
    if resp.status_code in (200, 201):
        job_id = resp.json()["job_id"]
        assert_answered(client.post(f"/v1/jobs/{job_id}/start",
                                    content=json.dumps(body, allow_nan=True), headers=headers))


@FUZZ
@given(template=st.sampled_from(["/v1/jobs/{}", "/image/hd/result/{}", "/video/result/{}",
                                 "/api/download/{}", "/results/{}/{}", "/v1/jobs/{}/start"]),
       ident=nasty_text.filter(lambda s: "?" not in s and "#" not in s))
def test_ids_in_paths(client, template, ident):
    from urllib.parse import quote
    path = template.format(*(quote(ident, safe="") or "x" for _ in range(template.count("{}"))))
    method = "POST" if path.endswith("/start") else "GET"
    resp = client.request(method, path, json={} if method == "POST" else None)
    assert_answered(resp)
    assert resp.status_code >= 400  # a made-up id never finds anything


@FUZZ
@given(data=st.one_of(st.binary(max_size=4000), image_bytes()), form=st.dictionaries(
           st.sampled_from(["bg_color", "bg_image_url", "model", "output_format", "output",
                            "crop", "crop_margin", "max_size", "format", "refine",
                            "clean_mask"]),
           st.one_of(nasty_text, URLS, OUTPUT_VALUES), max_size=3),
       target=st.sampled_from(["/video/submit/v1", "/image/hd/submit/v1", "/api/upload"]))
def test_uploads(client, data, form, target):
    field = {"/video/submit/v1": "video", "/image/hd/submit/v1": "image"}.get(target, "file")
    resp = client.post(target, data=form, files={field: ("clip.mp4", io.BytesIO(data),
                                                         "video/mp4")})
    assert_answered(resp)
