"""Output options on pixels: clean-up, matting refinement, crop box, size cap and formats."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from pipelines import output, quality
from pipelines.errors import InvalidParameter

from conftest import REPO


def test_clean_mask_drops_a_planted_island_and_fills_a_planted_hole():
    mask = np.zeros((200, 200), np.uint8)
    mask[40:160, 40:160] = 255  # the subject
    mask[80:86, 80:86] = 0  # a 36 px hole in it
    mask[5:10, 180:185] = 255  # a 25 px island
    cleaned = output.clean_mask(mask)  # min area: 64 px here
    assert cleaned[80:86, 80:86].min() == 255 and cleaned[5:10, 180:185].max() == 0
    assert np.array_equal(cleaned[40:160, 40:160] > 0, np.ones((120, 120), bool))
    big_hole = mask.copy()
    big_hole[60:100, 60:100] = 0  # 1600 px: a real hole (a handle), kept
    assert output.clean_mask(big_hole)[70, 70] == 0


def test_subject_box_with_pixel_and_percent_margins():
    alpha = np.full((100, 200), 3, np.uint8)  # faint background noise, as models leave
    alpha[20:60, 50:150] = 200
    assert output.subject_box(alpha) == (50, 20, 150, 60)
    assert output.subject_box(alpha, "10") == (40, 10, 160, 70)
    assert output.subject_box(alpha, "10%") == (40, 16, 160, 64)  # 10% of 100 x 40
    assert output.subject_box(alpha, "100") == (0, 0, 200, 100)  # clamped to the image
    with pytest.raises(InvalidParameter, match="no subject"):
        output.subject_box(np.zeros_like(alpha))
    for bad in ("-5", "abc", "200%", "5 px"):
        with pytest.raises(InvalidParameter, match="crop_margin"):
            output.subject_box(alpha, bad)


def test_fit_caps_the_longest_side_and_never_upscales():
    image = np.zeros((300, 600, 4), np.uint8)
    assert output.fit(image, 200).shape == (100, 200, 4)
    assert output.fit(image, 1000).shape == (300, 600, 4)
    assert output.fit(image, None).shape == (300, 600, 4)


def test_formats_keep_alpha_or_refuse_it():
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0], rgba[5:15, 5:25, 3] = 200, 255
    webp = Image.open(io.BytesIO(output.encode(rgba, "webp")))
    assert webp.format == "WEBP" and webp.mode == "RGBA"
    assert np.array_equal(np.asarray(webp)[..., 3], rgba[..., 3])  # lossless
    png = Image.open(io.BytesIO(output.encode(rgba, "png")))
    assert png.format == "PNG" and np.array_equal(np.asarray(png), rgba)
    with pytest.raises(InvalidParameter, match="jpg cannot carry transparency") as err:
        output.encode(rgba, "jpg")
    assert err.value.details == {"field": "format"}
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert Image.open(io.BytesIO(output.encode(opaque, "jpg"))).format == "JPEG"
    grey = Image.open(io.BytesIO(output.encode(rgba[..., 3], "jpg")))
    assert grey.mode == "L"


def test_matting_lowers_the_error_on_a_soft_edge():
    """A hard-thresholded mask of a soft-edged subject: matting on the band brings the alpha
    closer to the truth (exact ground truth from the quality benchmark's data)."""
    sys.path.insert(0, str(REPO / "bench"))
    import quality_data

    sample = next(s for s in quality_data.samples(foregrounds=("soft",),
                                                   backgrounds=("brick",)))
    hard = np.where(sample.alpha > 0.5, 255, 0).astype(np.uint8)  # a model that cannot do soft
    refined = output.refine_matting(sample.rgb, hard, band=10)
    band = (sample.alpha > 0.02) & (sample.alpha < 0.98)
    before = quality.sad(hard[band], (sample.alpha[band] * 255).astype(np.uint8))
    after = quality.sad(refined[band], (sample.alpha[band] * 255).astype(np.uint8))
    assert after < before * 0.8, (before, after)
    import cv2
    inner = cv2.erode((hard == 255).astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
    assert inner.any() and (refined[inner] == 255).all()  # far from the edge: kept as it was


# ---- through the running app ------------------------------------------------------------------

def _post(client, effect: str = "matte", **form):
    from conftest import disk_image, png_bytes

    return client.post(f"/image/{effect}/v1", data={"model": "tiny", **form},
                       files={"image": ("a.png", png_bytes(disk_image(120, 80)), "image/png")})


@pytest.mark.serve
def test_mask_crop_size_and_formats_through_the_image_api(client):
    rgba = np.asarray(Image.open(io.BytesIO(_post(client).content)))
    alpha = rgba[..., 3]
    mask = _post(client, output="mask")
    assert mask.headers["content-type"] == "image/png"
    grey = Image.open(io.BytesIO(mask.content))
    assert grey.mode == "L" and np.array_equal(np.asarray(grey), alpha)  # the same alpha

    x0, y0, x1, y1 = output.subject_box(alpha, "4")
    cropped = Image.open(io.BytesIO(_post(client, crop="true", crop_margin="4").content))
    assert cropped.size == (x1 - x0, y1 - y0) and cropped.size != (120, 80)
    assert np.array_equal(np.asarray(cropped), rgba[y0:y1, x0:x1])

    small = Image.open(io.BytesIO(_post(client, max_size="60").content))
    assert small.size == (60, 40)
    webp = _post(client, format="webp")
    assert webp.headers["content-type"] == "image/webp"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(webp.content)))[..., 3], alpha)
    jpg = _post(client, "color", format="jpg", bg_color="#ff0000")
    assert jpg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpg.content)).format == "JPEG"
    assert _post(client, refine="matting", clean_mask="true").status_code == 200


@pytest.mark.serve
@pytest.mark.parametrize("form", [{"format": "jpg"}, {"crop_margin": "abc"}, {"max_size": "5"},
                                  {"format": "gif"}, {"output": "alpha"}, {"refine": "magic"},
                                  {"crop": "perhaps"}, {"crop_margin": "101%"}])
def test_bad_output_options_are_refused_in_the_family_shape(client, form):
    r = _post(client, **form)
    assert r.status_code in (400, 422) and set(r.json()) == {"message"}, r.text
    field = next(iter(form))
    assert field in r.json()["message"] or "format" in r.json()["message"]


@pytest.mark.serve
def test_no_output_options_keep_the_v1_png(client):
    r = _post(client)
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).mode == "RGBA"


@pytest.mark.serve
def test_remove_command_takes_the_output_options(base_url, api_key, tmp_path):
    from serve_app.cli import main as cli

    from conftest import disk_image

    src = tmp_path / "a.png"
    Image.fromarray(disk_image(90, 60)).save(src)
    out = tmp_path / "out"
    assert cli(["remove", str(src), "--out", str(out), "--url", base_url, "--api-key", api_key,
                "--model", "tiny", "--output", "mask", "--crop", "--crop-margin", "2",
                "--format", "webp", "--clean-mask"]) == 0
    result = Image.open(out / "a.webp")
    assert result.format == "WEBP" and result.size[0] < 90  # cropped to the subject


def test_matting_leaves_a_mask_it_cannot_solve_alone():
    """A sure region too thin to survive the solver's downscale: the mask comes back as it
    was instead of pymatting's error (a 500 after the model work)."""
    rgb = np.zeros((1500, 1500, 3), np.uint8)
    mask = np.zeros((1500, 1500), np.uint8)
    mask[:, 700:760] = 255  # sure inside only within a few px of the middle after erosion
    out = output.refine_matting(rgb, mask, band=28, max_pixels=40_000)
    assert np.array_equal(out, mask)


# ---- the same options on HD and /v1/jobs image jobs ------------------------------------------

def _hd(client, **form):
    """An HD job's finished response (the result is deleted once downloaded)."""
    from test_jobs_api import hd_wait

    from conftest import disk_image, png_bytes

    r = client.post("/image/hd/submit/v1", data={"model": "tiny", **form},
                    files={"image": ("a.png", png_bytes(disk_image(300, 200)), "image/png")})
    assert r.status_code == 202, r.text
    return hd_wait(client, r.json()["uuid"])


@pytest.mark.serve
def test_hd_takes_the_output_options(client):
    plain = _hd(client)
    assert plain.headers["content-type"] == "image/png"  # no option sent: the v1 PNG
    alpha = np.asarray(Image.open(io.BytesIO(plain.content)))[..., 3]
    mask = Image.open(io.BytesIO(_hd(client, output="mask").content))
    assert mask.mode == "L" and np.array_equal(np.asarray(mask), alpha)

    x0, y0, x1, y1 = output.subject_box(alpha, "10%")
    cropped = _hd(client, crop="true", crop_margin="10%", output="mask", format="jpg")
    assert cropped.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(cropped.content)).size == (x1 - x0, y1 - y0)

    webp = _hd(client, format="webp", max_size="150")
    assert webp.headers["content-type"] == "image/webp"
    small = Image.open(io.BytesIO(webp.content))
    assert small.size == (150, 100) and small.mode == "RGBA"
    assert _hd(client, refine="matting", clean_mask="true").status_code == 200


@pytest.mark.serve
@pytest.mark.parametrize("form", [{"format": "jpg"}, {"crop_margin": "abc"}, {"max_size": "5"},
                                  {"output": "alpha"}, {"refine": "magic"}])
def test_bad_hd_output_options_get_the_detail_shape(client, form):
    from conftest import disk_image, png_bytes

    r = client.post("/image/hd/submit/v1", data=form,
                    files={"image": ("a.png", png_bytes(disk_image(60, 40)), "image/png")})
    assert r.status_code == 400 and set(r.json()) == {"detail"}, r.text
    assert next(iter(form)) in r.json()["detail"]


def _job_output(client, **body):
    from test_jobs_api import wait_for

    from conftest import disk_image, png_bytes

    up = client.post("/api/upload", files={"file": ("a.png", png_bytes(disk_image(240, 160)),
                                                    "image/png")})
    job = client.post("/v1/jobs", json={"upload_id": up.json()["upload_id"], **body})
    assert job.status_code == 201, job.text
    job_id = job.json()["job_id"]
    final = wait_for(lambda: (r := client.get(f"/v1/jobs/{job_id}").json())["status"]
                     in ("completed", "failed") and r)
    assert final["status"] == "completed", final
    return client.get(final["output_url"])


@pytest.mark.serve
def test_image_jobs_take_the_output_options(client):
    alpha = np.asarray(Image.open(io.BytesIO(_job_output(client).content)))[..., 3]
    mask = _job_output(client, output="mask", crop=True, crop_margin="6")
    x0, y0, x1, y1 = output.subject_box(alpha, "6")
    grey = np.asarray(Image.open(io.BytesIO(mask.content)))
    assert grey.ndim == 2 and np.array_equal(grey, alpha[y0:y1, x0:x1])

    jpg = _job_output(client, output_format="jpg", max_size=120,
                      background={"type": "color", "color": "#00ff00"})
    assert jpg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpg.content)).size == (120, 80)
    # a crop comes before the composition: the subject's box is what the canvas places
    placed = _job_output(client, crop=True, composition={
        "canvas": {"width": 400, "height": 100}, "foreground": {"anchor": "left"}})
    out = np.asarray(Image.open(io.BytesIO(placed.content)))
    assert out.shape == (100, 400, 4)
    assert np.argmax(out[50, :, 3] > 128) < 6  # the subject's box starts at the left edge


@pytest.mark.serve
@pytest.mark.parametrize("body", [
    {"output_format": "jpg"},  # transparent
    {"max_size": 5}, {"crop_margin": "x"}, {"refine": "magic"}, {"output": "alpha"},
    {"video_url": "https://example.com/a.mp4", "crop": True},  # an image-job option
])
def test_bad_job_output_options_get_the_error_shape(client, body):
    from test_jobs_api import assert_002

    if "video_url" not in body:
        body = {"image_url": "https://example.com/a.png", **body}
    assert_002(client.post("/v1/jobs", json=body), 400, "invalid_request")
