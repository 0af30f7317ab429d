import numpy as np
import pytest

from pipelines import effects
from pipelines.errors import InvalidParameter

H, W = 80, 120


def scene():
    """Red subject (left half, soft 8-px edge) over a green background."""
    rgb = np.zeros((H, W, 3), np.float32)
    alpha = np.clip((60 - np.arange(W)) / 8.0 + 0.5, 0, 1)[None, :].repeat(H, 0)
    fg, bg = np.array([220, 20, 20], np.float32), np.array([20, 200, 20], np.float32)
    rgb = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return rgb.round().astype(np.uint8), (alpha * 255).round().astype(np.uint8)


def test_foreground_estimation_removes_background_colour_from_edges():
    rgb, alpha = scene()
    fg = effects.estimate_foreground(rgb, alpha)
    edge = (alpha > 40) & (alpha < 215)
    # The photo's edge pixels are part green; the estimated subject colour is not.
    assert rgb[edge][:, 1].mean() > 60
    assert fg.dtype == np.uint8 and fg[edge][:, 1].mean() < 35
    opaque = alpha == 255
    np.testing.assert_array_equal(fg[opaque], rgb[opaque])


def test_cutout_alpha_is_the_mask():
    rgb, alpha = scene()
    out = effects.cutout(rgb, alpha)
    assert out.shape == (H, W, 4)
    np.testing.assert_array_equal(out[..., 3], alpha)


def test_blur_keeps_subject_sharp_and_background_free_of_subject_colour():
    rgb, alpha = scene()
    out = effects.blur_background(rgb, alpha, strength=15).astype(int)
    np.testing.assert_array_equal(out[:, :40], rgb[:, :40])  # opaque subject untouched
    # Just outside the subject, a plain blur drags red in; the normalised blur does not.
    assert out[:, 75:90, 0].mean() < 30
    # Edge pixels carry no green halo from the old background.
    edge = (alpha > 40) & (alpha < 215)
    assert out[edge][:, 1].mean() < rgb[edge][:, 1].mean()


def test_color_background_is_exact_where_transparent():
    rgb, alpha = scene()
    out = effects.color_background(rgb, alpha, (0, 0, 255))
    assert out.shape == (H, W, 3)
    assert (out[alpha == 0] == [0, 0, 255]).all()
    np.testing.assert_array_equal(out[alpha == 255], rgb[alpha == 255])


@pytest.mark.parametrize("angle, first, last", [
    (90, (0, slice(None)), (-1, slice(None))),  # left -> right: compare columns
    (180, (slice(None), 0), (slice(None), -1)),  # top -> bottom: compare rows
])
def test_gradient_direction_follows_css_angles(angle, first, last):
    g = effects.linear_gradient(W, H, (255, 0, 0), (0, 0, 255), angle)
    if angle == 90:
        start, end = g[:, 0], g[:, -1]
    else:
        start, end = g[0], g[-1]
    np.testing.assert_allclose(start, [[1, 0, 0]] * len(start), atol=1e-6)
    np.testing.assert_allclose(end, [[0, 0, 1]] * len(end), atol=1e-6)


def test_shadow_is_cast_from_alpha_at_the_offset():
    alpha = np.zeros((H, W), np.uint8)
    alpha[20:40, 20:40] = 255
    rgb = np.full((H, W, 3), 128, np.uint8)
    out = effects.drop_shadow(rgb, alpha, offset=(25, 15), blur=2, opacity=0.8)
    assert out.shape == (H, W, 4)
    shadow_only = out[..., 3].astype(float) * (alpha == 0)
    ys, xs = np.nonzero(shadow_only > 100)
    # The shadow's visible part is the square shifted by (25, 15), minus the subject itself.
    assert 45 <= xs.mean() <= 60 and 35 <= ys.mean() <= 50
    assert out[70, 5, 3] == 0  # far from both: transparent
    assert (out[25:35, 25:35, 3] == 255).all()  # subject stays opaque
    opaque = effects.drop_shadow(rgb, alpha, offset=(25, 15), background=(255, 255, 255))
    assert opaque.shape == (H, W, 3) and (opaque[70, 5] == 255).all()
    assert opaque[45, 55].max() < 240  # shadow darkens the white background


@pytest.mark.parametrize("text, rgb", [
    ("#ff8000", (255, 128, 0)), ("#fff", (255, 255, 255)), ("10, 20,30", (10, 20, 30)),
    ("red", (255, 0, 0)),
])
def test_parse_color(text, rgb):
    assert effects.parse_color(text) == rgb


@pytest.mark.parametrize("text", ["", "256,0,0", "#12", "nocolour", "1,2"])
def test_parse_color_rejects(text):
    with pytest.raises(InvalidParameter):
        effects.parse_color(text)
