"""Text prompts and click/box prompts on /v1/jobs: term selection (pure), the CLIPSeg backend
with a tiny random-weight checkpoint built here, and the job flow through the running app."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_jobs_api import assert_002, wait_for

from pipelines.errors import InvalidRequest, ModelFileMissing
from pipelines.textseg import select

from conftest import disk_image, make_tiny_clipseg, png_bytes, tiny_catalog

transformers = pytest.importorskip("transformers", reason="text prompts need transformers")


def test_select_keeps_what_matched_terms_cover():
    h, w = 100, 200
    base = np.full((h, w), 255, np.uint8)
    left = np.zeros((h, w), np.float32)
    left[:, :80] = 0.9
    faint = np.full((h, w), 0.1, np.float32)
    mask, report = select(np.stack([left, faint]), ["cup", "ring"], base, threshold=0.4)
    assert report == {"matched": ["cup"], "unmatched": ["ring"]}
    assert mask[50, 20] == 255 and mask[50, 190] == 0  # kept inside the region, not far away
    assert mask[50, 150] < mask[50, 81]  # soft widening near the region's edge
    none, report = select(np.stack([faint]), ["ring"], base)
    assert report["matched"] == [] and not none.any()


def test_select_on_maps_smaller_than_the_mask():
    """Large images are scored at a capped size; the region is enlarged to the mask's."""
    base = np.full((400, 800), 255, np.uint8)
    small = np.zeros((1, 100, 200), np.float32)
    small[0, :, :50] = 0.9
    mask, report = select(small, ["left"], base)
    assert mask.shape == (400, 800) and report["matched"] == ["left"]
    assert mask[200, 50] == 255 and mask[200, 700] == 0


def test_clipseg_backend_from_a_local_folder(tmp_path):
    from pipelines.textseg import ClipSegBackend

    backend = ClipSegBackend(make_tiny_clipseg(tmp_path / "m"))
    maps = backend.heatmaps(disk_image(90, 60), ["cat", "red dog"])
    assert maps.shape == (2, 60, 90) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and not np.allclose(maps[0], maps[1])
    with pytest.raises(ModelFileMissing, match=r"config\.json"):
        ClipSegBackend(tmp_path / "empty")


def test_text_prompt_refused_clearly_without_a_backend():
    from serve_app.builder import _text_model
    from serve_app.config import AppConfig
    from serve_app.routes.jobs import _text_terms

    config = AppConfig.model_validate({"models": ["u2netp"]})
    app, reason = _text_model(config, {})
    assert app is None and "text_prompt.model_dir" in reason
    api = SimpleNamespace(setup=SimpleNamespace(features={"text_prompt": reason}))
    with pytest.raises(InvalidRequest, match=r"cannot be used.*not configured"):
        _text_terms(api, "person, bag", "image")
    ok = SimpleNamespace(setup=SimpleNamespace(features={"text_prompt": None}))
    assert _text_terms(ok, " person ,, bag ", "image") == ["person", "bag"]
    with pytest.raises(InvalidRequest, match="no terms"):
        _text_terms(ok, " , ", "image")
    with pytest.raises(InvalidRequest, match="image jobs"):
        _text_terms(ok, "person", "video")


# ---- through the running app -------------------------------------------------------------------

def _job(client, image: np.ndarray, start: dict) -> dict:
    up = client.post("/api/upload", files={"file": ("a.png", png_bytes(image), "image/png")})
    assert up.status_code == 201, up.text
    created = client.post("/v1/jobs", json={"upload_id": up.json()["upload_id"],
                                            "model": "light", "auto_start": False})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    started = client.post(f"/v1/jobs/{job_id}/start", json=start)
    assert started.status_code == 200, started.text
    return wait_for(lambda: (r := client.get(f"/v1/jobs/{job_id}").json())["status"]
                    in ("completed", "failed") and r)


@pytest.mark.serve
def test_text_prompt_job_reports_terms_and_keeps_what_they_name(client, tmp_path, tiny_model):
    from pipelines.catalog import load_catalog
    from pipelines.render import render_image_job
    from pipelines.segmenter import OnnxSegmenter
    from pipelines.textseg import ClipSegBackend

    from serve_harness import TEXT_THRESHOLD

    if client.get("/health").json()["features"]["text_prompt"] != "available":
        pytest.skip("text_prompt backend not deployed in the test app")
    image = disk_image(160, 120)
    terms = ["bright disk", "cat"]
    final = _job(client, image, {"model": "light", "text_prompt": "bright disk, cat"})

    # The same computation here, from the same checkpoint and model: the job must agree.
    seg = OnnxSegmenter(load_catalog(tiny_catalog(tmp_path)).get("tiny"), tiny_model)
    maps = ClipSegBackend(make_tiny_clipseg(tmp_path / "clipseg")).heatmaps(image, terms)
    mask, report = select(maps, terms, seg.predict(image), threshold=TEXT_THRESHOLD)
    if not report["matched"]:
        assert final["status"] == "failed" and "None of the text_prompt terms" in final["error"]
        return
    assert final["status"] == "completed", final
    assert final["text_prompt"] == report
    got = np.asarray(Image.open(io.BytesIO(client.get(final["output_url"]).content)))
    expected, _ = render_image_job(png_bytes(image), lambda _rgb: mask, max_pixels=10**8)
    want = np.asarray(Image.open(io.BytesIO(expected)))
    assert np.abs(got[..., 3].astype(int) - want[..., 3]).max() <= 1


@pytest.mark.serve
def test_job_prompt_errors(client):
    up = client.post("/api/upload", files={"file": ("a.png", png_bytes(disk_image()),
                                                    "image/png")})
    created = client.post("/v1/jobs", json={"upload_id": up.json()["upload_id"],
                                            "auto_start": False}).json()
    r = client.post(f"/v1/jobs/{created['job_id']}/start", json={"text_prompt": " , "})
    assert_002(r, 400, "invalid_request")
    r = client.post(f"/v1/jobs/{created['job_id']}/start", json={"prompt": {"box": [1, 2]}})
    assert_002(r, 400, "invalid_request")
    for prompt in ({"box": [9, 9, 1, 1]}, {"background_points": [[1, 1]], "mode": "replace"},
                   {"points": [[1, 1]] * 20, "background_points": [[2, 2]] * 20},
                   {"points": [[-1, 3]]}):
        r = client.post(f"/v1/jobs/{created['job_id']}/start", json={"prompt": prompt})
        assert_002(r, 400, "invalid_request")
    r = client.post(f"/v1/jobs/{created['job_id']}/start", headers={"content-type":
                    "application/json"}, content='{"prompt": {"points": [[NaN, 1]]}}')
    assert_002(r, 400, "invalid_request")
    r = client.post(f"/v1/jobs/{created['job_id']}/start", json={"text_prompt": "x" * 101})
    assert_002(r, 400, "invalid_request")
    assert client.get(f"/v1/jobs/{created['job_id']}").json()["status"] == "created"


@pytest.mark.serve
def test_box_prompt_job(client):
    if client.get("/health").json()["features"]["prompts"] != "available":
        pytest.skip("prompt model not deployed in the test app")
    image = disk_image(320, 240)
    final = _job(client, image, {"prompt": {"box": [70, 50, 250, 190], "mode": "replace"}})
    assert final["status"] == "completed", final
    alpha = np.asarray(Image.open(io.BytesIO(client.get(final["output_url"]).content)))[..., 3]
    yy, xx = np.mgrid[0:240, 0:320]
    truth = ((xx - 160) / 80) ** 2 + ((yy - 120) / 60) ** 2 <= 1
    a = alpha > 127
    assert (a & truth).sum() / (a | truth).sum() > 0.95


def test_the_original_tier_follows_a_default_of_auto():
    from types import SimpleNamespace

    from serve_app.routes.jobs import _tier_model

    svc = SimpleNamespace(setup=SimpleNamespace(tier_models={"original": "auto", "light": "u2netp"}),
                          models=SimpleNamespace(handles={"u2netp": object()},
                                                 auto_models=["u2netp"]))
    assert _tier_model(svc, "original") == "auto" and _tier_model(svc, "auto") == "auto"
    assert _tier_model(svc, "light") == "u2netp"
    with pytest.raises(InvalidRequest, match="tier 'pro'"):
        _tier_model(svc, "pro")
