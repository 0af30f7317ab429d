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
    alpha = np.zeros((100, 200), np.uint8)
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
