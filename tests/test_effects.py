import cv2
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


# ---- Blur-Fusion in strips (HD images) --------------------------------------------------------

def soft_scene(h, w, seed=0, sigma=None):
    """A random image and a realistic soft mask: a blurred disk (plus a faint haze, as u2net's
    min-max normalised masks have)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disk = (((xx - w * 0.45) / (w * 0.3)) ** 2 + ((yy - h * 0.55) / (h * 0.35)) ** 2 < 1)
    soft = cv2.GaussianBlur(disk.astype(np.float32), (0, 0), sigma or max(h, w) / 60)
    alpha = (soft * 255 + 0.5).astype(np.uint8)
    alpha[:h // 3, : w // 4] = np.maximum(alpha[:h // 3, : w // 4], 3)
    return rgb, alpha


def whole_frame_blur_fusion(rgb, alpha):
    """The algorithm on the whole frame at once with plain cv2.resize (what the strips replace)."""
    def box(x, r):
        return cv2.blur(x, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)

    def box_downscaled(x, r, factor):
        h, w = x.shape[:2]
        small = cv2.resize(x, (max(1, w // factor), max(1, h // factor)),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(box(small, max(1, r // factor)), (w, h), interpolation=cv2.INTER_LINEAR)

    eps = 1e-5
    image = rgb.astype(np.float32) / 255
    a = alpha.astype(np.float32) / 255
    a3 = a[:, :, None]
    large = max(3, min(90, max(rgb.shape[:2]) // 8))
    factor = max(1, large // 8)
    blurred_a = box_downscaled(a, large, factor)[:, :, None]
    f_blur = box_downscaled(image * a3, large, factor) / (blurred_a + eps)
    b_blur = box_downscaled(image * (1 - a3), large, factor) / (1 + eps - blurred_a)
    f1 = np.clip(f_blur + a3 * (image - a3 * f_blur - (1 - a3) * b_blur), 0, 1)
    f1[alpha == 255] = image[alpha == 255]
    blurred_a = box(a, 6)[:, :, None]
    f_blur2 = box(f1 * a3, 6) / (blurred_a + eps)
    b_blur2 = box(b_blur * (1 - a3), 6) / (1 + eps - blurred_a)
    f2 = f_blur2 + a3 * (image - a3 * f_blur2 - (1 - a3) * b_blur2)
    band = (alpha > 0) & (alpha < 255)
    out = rgb.copy()
    out[band] = np.clip(f2[band] * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("h, w", [(300, 200), (203, 517), (90, 100)])
def test_strips_give_the_same_foreground_as_one_strip(h, w):
    # (90, 100): small enough that the wide blur runs at full resolution (factor 1).
    rgb, alpha = soft_scene(h, w)
    one = effects.estimate_foreground(rgb, alpha, max_strip_pixels=h * w)
    for rows in (37, 1, 6):
        strips = effects.estimate_foreground(rgb, alpha, max_strip_pixels=rows * w)
        assert np.abs(strips.astype(int) - one).max() <= 1, rows
    # The strips' resampling lines up with plain whole-frame cv2.resize.
    assert np.abs(whole_frame_blur_fusion(rgb, alpha).astype(int) - one).max() <= 1


def test_strips_on_a_photo_like_image_with_a_wide_soft_band():
    rng = np.random.default_rng(5)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (257, 384, 3), dtype=np.uint8), (0, 0), 3)
    _, alpha = soft_scene(257, 384, sigma=25)  # most pixels partially transparent
    one = effects.estimate_foreground(rgb, alpha, max_strip_pixels=10**9)
    strips = effects.estimate_foreground(rgb, alpha, max_strip_pixels=37 * 384)
    assert np.abs(strips.astype(int) - one).max() <= 1
    assert np.abs(whole_frame_blur_fusion(rgb, alpha).astype(int) - one).max() <= 1


def test_foreground_without_soft_pixels_is_the_input():
    rgb, alpha = soft_scene(60, 80)
    hard = np.where(alpha > 127, 255, 0).astype(np.uint8)
    assert effects.estimate_foreground(rgb, hard) is rgb
    # Strips with only opaque/transparent pixels are skipped and stay as they were.
    alpha = np.zeros((120, 80), np.uint8)
    alpha[50:70, 20:60] = 255
    alpha[60, 30:50] = 128
    out = effects.estimate_foreground(rgb.repeat(2, 0), alpha, max_strip_pixels=10 * 80)
    changed = np.any(out != rgb.repeat(2, 0), axis=2)
    assert changed[60, 30:50].any() and not changed[alpha != 128].any()


@pytest.mark.parametrize("shape", [(13, 17, 3), (9, 11), (1, 5, 3)])
def test_upsampled_rows_are_rows_of_the_whole_resize(shape):
    small = np.random.default_rng(2).random(shape, dtype=np.float32)
    width, height = 83, 61
    whole = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    for y0, y1 in [(0, 61), (0, 5), (5, 42), (37, 61), (60, 61)]:
        rows = effects._upsample_rows(small, width, height, y0, y1)
        np.testing.assert_allclose(rows, whole[y0:y1], atol=1e-5)


@pytest.mark.parametrize("rows", [1, 37, 1000])
def test_wide_blurs_in_strips_match_the_whole_frame_downscale(rows):
    rgb, alpha = soft_scene(203, 517)
    image, a = rgb.astype(np.float32) / 255, alpha.astype(np.float32) / 255
    small = (517 // 8, 203 // 8)

    def reference(x):
        return cv2.blur(cv2.resize(x, small, interpolation=cv2.INTER_AREA), (17, 17),
                        borderType=cv2.BORDER_REFLECT)

    expected = [reference(a), reference(image * a[..., None]),
                reference(image * (1 - a[..., None]))]
    got = effects._wide_blurs(rgb, alpha, 64, 8, rows)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)
