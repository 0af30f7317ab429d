"""Backdrops (procedural scenes, shadow, light wrap, colour matching) and AI backgrounds
(the diffusers inpainting backend with a tiny random-weight pipeline built here, and
`/image/backdrop/v1` and `/image/generate/v1` through the running app)."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipelines import scene
from pipelines.errors import InvalidParameter, ModelFileMissing, ModelUnavailable
from pipelines.generate import GenerateOptions, generate, transparent_enough

from conftest import disk_image, make_tiny_inpainter, png_bytes


def _cutout(width: int = 160, height: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A subject (bright ellipse) with a soft-edged alpha, standing on the lower part."""
    rgb = disk_image(width, height)
    yy, xx = np.mgrid[0:height, 0:width]
    d = ((xx - width / 2) / (width / 4)) ** 2 + ((yy - height / 2) / (height / 4)) ** 2
    alpha = (np.clip((1.15 - d) / 0.3, 0, 1) * 255).astype(np.uint8)
    return rgb, alpha


def test_procedural_scenes():
    sweep = scene.sweep(200, 100, (200, 190, 180))
    assert sweep.shape == (100, 200, 3) and sweep[10, 100].sum() > sweep[69, 100].sum()
    assert sweep[50, 100].sum() > sweep[50, 2].sum()  # vignette: darker at the sides
    grad = scene.gradient(10, 50, (255, 0, 0), (0, 0, 255))
    assert tuple(grad[0, 0]) == (255, 0, 0) and tuple(grad[-1, 0]) == (0, 0, 255)
    a, b = scene.bokeh(120, 80, (40, 80, 200), seed=1), scene.bokeh(120, 80, (40, 80, 200), seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, scene.bokeh(120, 80, (40, 80, 200), 2))
    assert scene.fit_scene(grad, 30, 20).shape == (20, 30, 3)


def test_place_keeps_the_subject_exactly_and_grounds_it():
    rgb, alpha = _cutout()
    bg = np.full((120, 160, 3), 200, np.uint8)
    out = scene.place(rgb, alpha, bg, shadow_opacity=0.6, light_wrap=0.5)
    solid = alpha == 255
    assert np.array_equal(out[solid], rgb[solid])  # the subject's own pixels
    base = np.nonzero(alpha.max(axis=1) > 127)[0][-1]
    assert out[base + 2, 80].mean() < 190  # the contact shadow darkens the floor under it
    assert out[5, 5].mean() == pytest.approx(200, abs=2)  # far away: the scene as it was
    edge = (alpha > 40) & (alpha < 215)
    plain = scene.place(rgb, alpha, bg, shadow_opacity=0, light_wrap=0)
    assert np.abs(out[edge].astype(int) - plain[edge]).mean() > 1  # light wrap on the edge
    matched = scene.place(rgb, alpha, np.full_like(bg, (20, 20, 120)), color_match=1.0)
    def blueness(px):
        return px[:, 2].mean() / px[:, 0].mean()

    assert blueness(matched[solid]) > blueness(plain[solid]) + 0.05  # moved towards blue


class Flat:
    """A stand-in generator painting a flat colour: checks what `generate` asks for."""

    def __init__(self):
        self.calls = []

    def paint(self, rgb, hole, options):
        self.calls.append((rgb.shape, hole))
        return np.full(rgb.shape, (10, 200, 30), np.uint8)


def test_generate_paints_the_hole_and_pastes_the_subject_back():
    rgb, alpha = _cutout()
    flat = Flat()
    out = generate(rgb, alpha, flat, GenerateOptions(prompt="grass", width=320))
    assert out.shape == (240, 320, 3)  # height follows the aspect ratio
    (shape, hole), = flat.calls
    assert shape == (240, 320, 3) and hole[0, 0] == 255 and hole[120, 160] == 0
    assert tuple(out[2, 2]) == (10, 200, 30)
    with pytest.raises(InvalidParameter):
        generate(rgb, alpha, flat, GenerateOptions(prompt="  "))
    assert transparent_enough(alpha) and not transparent_enough(np.full_like(alpha, 255))
    assert not transparent_enough(None)


@pytest.fixture(scope="module")
def inpainter(tmp_path_factory):
    pytest.importorskip("diffusers", reason="the generator backend needs diffusers")
    from pipelines.generate import DiffusersInpainter

    return DiffusersInpainter(make_tiny_inpainter(tmp_path_factory.mktemp("sd")))


def test_diffusers_inpainter_with_a_tiny_pipeline(inpainter, tmp_path):
    rgb, alpha = _cutout(100, 60)
    opts = GenerateOptions(prompt="a beach", negative_prompt="blur", seed=3, steps=2)
    one = generate(rgb, alpha, inpainter, opts)
    assert one.shape == (60, 100, 3)
    assert np.array_equal(one, generate(rgb, alpha, inpainter, opts))  # same seed, same image
    other = generate(rgb, alpha, inpainter, GenerateOptions(prompt="a beach", seed=4, steps=2))
    assert not np.array_equal(one, other)
    solid = alpha == 255
    assert np.array_equal(one[solid], rgb[solid])
    assert inpainter.native == 32 and inpainter.multiple == 4  # 16 latents x VAE factor 2
    with pytest.raises(ModelFileMissing, match=r"model_index\.json"):
        type(inpainter)(tmp_path)


def test_generate_without_a_generator_says_so():
    from serve_app.builder import _generator
    from serve_app.config import AppConfig
    from serve_app.routes.backgrounds import generate_background

    app, reason = _generator(AppConfig.model_validate({"models": ["u2netp"]}), {})
    assert app is None and "generate.model_dir" in reason
    svc = SimpleNamespace(models=SimpleNamespace(generator=None),
                          setup=SimpleNamespace(features={"generate": reason}))
    with pytest.raises(ModelUnavailable, match="not available on this server"):
        asyncio.run(generate_background(svc, None, None, None))


# ---- through the running app -------------------------------------------------------------------

def _rgba_png(rgb, alpha) -> bytes:
    return png_bytes(Image.fromarray(np.dstack([rgb, alpha])))


@pytest.mark.serve
def test_generate_endpoint(client):
    if client.get("/health").json()["features"]["generate"] != "available":
        pytest.skip("no generator deployed in the test app (diffusers missing)")
    opaque = client.post("/image/generate/v1",
                         files={"image": ("a.png", png_bytes(disk_image(80, 60)))},
                         data={"prompt": "a beach"})
    assert opaque.status_code == 400
    assert opaque.json() == {"message": "The input image must have a transparent background."}
    rgb, alpha = _cutout(96, 64)
    r = client.post("/image/generate/v1", files={"image": ("a.png", _rgba_png(rgb, alpha))},
                    data={"prompt": "a beach", "seed": "1", "steps": "2", "width": "192"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    assert out.shape == (128, 192, 3)
    bad = client.post("/image/generate/v1", files={"image": ("a.png", _rgba_png(rgb, alpha))},
                      data={"steps": "0"})
    assert bad.status_code == 422 and "message" in bad.json()
    huge = client.post("/image/generate/v1", files={"image": ("a.png", _rgba_png(rgb, alpha))},
                       data={"width": "4096", "height": "4096"})  # 16.7 MP from a thumbnail
    assert huge.status_code == 422 and "Output size 4096x4096" in huge.json()["message"]


@pytest.mark.serve
def test_backdrop_endpoint(client):
    # An opaque photo: cut out by the model first, then put on a sweep.
    r = client.post("/image/backdrop/v1", files={"image": ("a.png", png_bytes(disk_image(96, 64)))},
                    data={"scene": "sweep", "scene_color": "#3060c0"})
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    assert out.shape == (64, 96, 3) and out[3, 3, 2] > out[3, 3, 0]  # a blue-ish scene
    # A cut-out keeps its own alpha: its opaque pixels come back exactly; an uploaded scene.
    rgb, alpha = _cutout(96, 64)
    scene_img = png_bytes(np.full((30, 40, 3), (250, 10, 10), np.uint8))
    r = client.post("/image/backdrop/v1", files={"image": ("a.png", _rgba_png(rgb, alpha)),
                                                 "scene_image": ("s.png", scene_img)},
                    data={"shadow_opacity": "0"})
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    solid = alpha == 255
    assert np.array_equal(out[solid], rgb[solid])
    assert tuple(out[1, 1]) == pytest.approx((250, 10, 10), abs=2)
    r = client.post("/image/backdrop/v1", files={"image": ("a.png", png_bytes(disk_image()))},
                    data={"scene": "moon"})
    assert r.status_code == 422
    # Clicks correct a cut-out's own alpha too (never silently ignored).
    features = client.get("/health").json()["features"]
    r = client.post("/image/backdrop/v1", files={"image": ("a.png", _rgba_png(rgb, alpha))},
                    data={"background_points": "48,32", "scene": "gradient",
                          "scene_color": "#00ff00", "scene_color_end": "#00ff00",
                          "shadow_opacity": "0", "light_wrap": "0"})
    if features["prompts"] != "available":
        assert r.status_code == 503 and "mobilesam" in r.json()["message"]
    else:
        assert r.status_code == 200, r.text
        out = np.asarray(Image.open(io.BytesIO(r.content)))
        assert tuple(out[32, 48]) == pytest.approx((0, 255, 0), abs=3)  # the subject is gone
