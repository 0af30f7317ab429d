"""Background effects: cut-out, blur, colour, gradient and drop shadow.

All functions take the original RGB image (uint8 H x W x 3) and an alpha mask (uint8 H x W) and
return a uint8 H x W x 3 (opaque) or H x W x 4 (transparent) array at full resolution.

Edges: a semi-transparent edge pixel of the photo is a mix of subject and old background colour.
Pasting it as is leaves a fringe of the old background around the subject. `estimate_foreground`
recovers the subject's own colour there with Blur-Fusion (Forte & Pitie, "Approximate Fast
Foreground Colour Estimation", ICIP 2021): two passes of box-filtered foreground/background
estimates and a local correction. Every compositor uses it. It runs in horizontal strips, so
a 48 MP photo needs a few hundred MB beyond its input and output, not several GB.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

RGB = tuple[int, int, int]


def _unit_alpha(alpha: np.ndarray) -> np.ndarray:
    return (alpha.astype(np.float32) / 255.0)[:, :, None]


def _box(x: np.ndarray, r: int) -> np.ndarray:
    k = 2 * r + 1
    return cv2.blur(x, (k, k), borderType=cv2.BORDER_REFLECT)


# Pixels per strip of estimate_foreground's full-resolution work (a 48 MP photo: 24 strips).
STRIP_PIXELS = 2_000_000
_FINE_RADIUS = 6  # pass 2's box radius: also the rows of context a strip needs on each side
_EPS = 1e-5


def _row_ranges(height: int, rows: int) -> list[tuple[int, int]]:
    return [(y, min(height, y + rows)) for y in range(0, height, rows)]


def _area_weights(height: int, small_height: int, y0: int, y1: int) -> tuple[int, np.ndarray]:
    """cv2.INTER_AREA's vertical weights (height -> small_height rows) of input rows y0..y1:
    the first small row they touch and a (small rows x input rows) float64 matrix."""
    scale = height / small_height
    i0 = max(0, int(y0 // scale) - 1)  # one spare row each side: rounding never drops one
    i1 = min(small_height, math.ceil(y1 / scale) + 1)
    i = np.arange(i0, i1, dtype=np.float64)[:, None]
    y = np.arange(y0, y1, dtype=np.float64)[None, :]
    overlap = np.minimum(y + 1.0, (i + 1.0) * scale) - np.maximum(y, i * scale)
    return i0, np.maximum(overlap, 0.0) / scale


def _wide_blurs(
    rgb: np.ndarray, alpha: np.ndarray, radius: int, factor: int, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1's wide box blurs of a, I a and I (1 - a), on a `factor`-times smaller copy.

    Same maps as blurring `cv2.resize(x, small, INTER_AREA)`, but the downscale is built strip by
    strip (INTER_AREA is separable: OpenCV shrinks each strip's rows, a small matrix product
    their columns), so no full-resolution float copy of the frame is ever made.
    """
    height, width = alpha.shape
    sw, sh = max(1, width // factor), max(1, height // factor)
    sums = np.zeros((sh, sw * 7), np.float64)
    for y0, y1 in _row_ranges(height, rows):
        image = rgb[y0:y1].astype(np.float32) * np.float32(1 / 255)
        a = alpha[y0:y1].astype(np.float32) * np.float32(1 / 255)
        weighted_f = image * a[:, :, None]
        image -= weighted_f  # I (1 - a), the background's share
        narrow = [cv2.resize(x, (sw, y1 - y0), interpolation=cv2.INTER_AREA)
                  for x in (a, weighted_f, image)]
        narrow[0] = narrow[0][:, :, None]
        stacked = np.concatenate(narrow, axis=2).reshape(y1 - y0, sw * 7)
        i0, weights = _area_weights(height, sh, y0, y1)
        sums[i0:i0 + len(weights)] += weights @ stacked
    small = sums.astype(np.float32).reshape(sh, sw, 7)
    r = max(1, radius // factor)
    blurred_a = _box(np.ascontiguousarray(small[:, :, 0]), r)
    return blurred_a, _box(small[:, :, 1:4].copy(), r), _box(small[:, :, 4:7].copy(), r)


def _upsample_rows(small: np.ndarray, width: int, height: int, y0: int, y1: int) -> np.ndarray:
    """Rows y0..y1 of cv2.resize(small, (width, height), INTER_LINEAR), from the few small rows
    they need: the same half-pixel-centre mapping, so strips join seamlessly. Vertical first (on
    the small width), then OpenCV stretches each row on its own."""
    sh = small.shape[0]
    fy = (np.arange(y0, y1, dtype=np.float64) + 0.5) * (sh / height) - 0.5
    top = np.floor(fy)
    weight = (fy - top).astype(np.float32).reshape((-1,) + (1,) * (small.ndim - 1))
    top = top.astype(np.intp)
    below = np.clip(top + 1, 0, sh - 1)
    top = np.clip(top, 0, sh - 1)  # outside the centres: the edge row, as OpenCV does
    rows = small[top]
    rows += (small[below] - rows) * weight
    return cv2.resize(rows, (width, y1 - y0), interpolation=cv2.INTER_LINEAR)


def _fuse_rows(
    rgb: np.ndarray, alpha: np.ndarray, wide: tuple[np.ndarray, ...], e0: int, e1: int
) -> np.ndarray:
    """Both Blur-Fusion passes on rows e0..e1 (float32, rows x W x 3); rows within
    _FINE_RADIUS of a strip edge that is not the frame's edge lack context and are dropped."""
    height, width = alpha.shape
    image = rgb[e0:e1].astype(np.float32) * np.float32(1 / 255)
    alpha = alpha[e0:e1]
    a = (alpha.astype(np.float32) * np.float32(1 / 255))[:, :, None]
    rest = 1.0 - a

    # Pass 1: wide radius; its blurs come from the small maps.
    blurred_a, f_blur, b_blur = (_upsample_rows(x, width, height, e0, e1) for x in wide)
    blurred_a = blurred_a[:, :, None]
    f_blur /= blurred_a + _EPS
    b_blur /= (1.0 + _EPS) - blurred_a
    del blurred_a
    f1 = a * f_blur
    np.subtract(image, f1, out=f1)
    b_blur *= rest  # B_blur (1 - a): also what pass 2 blurs
    f1 -= b_blur
    f1 *= a
    f1 += f_blur
    del f_blur
    np.clip(f1, 0.0, 1.0, out=f1)
    np.copyto(f1, image, where=(alpha == 255)[:, :, None])  # opaque pixels are the photo itself

    # Pass 2: radius 6, fed with pass 1's foreground.
    f1 *= a
    blurred_a = _box(a[:, :, 0], _FINE_RADIUS)[:, :, None]
    f_blur = _box(f1, _FINE_RADIUS)
    del f1
    f_blur /= blurred_a + _EPS
    b_blur = _box(b_blur, _FINE_RADIUS)
    b_blur /= (1.0 + _EPS) - blurred_a
    del blurred_a
    f2 = a * f_blur
    np.subtract(image, f2, out=f2)
    b_blur *= rest
    f2 -= b_blur
    f2 *= a
    f2 += f_blur
    return f2


def estimate_foreground(
    rgb: np.ndarray, alpha: np.ndarray, *, max_strip_pixels: int = STRIP_PIXELS
) -> np.ndarray:
    """The subject's own colours (uint8 H x W x 3): edge pixels with the old background removed.

    Only partially transparent pixels change. Blur-Fusion: F = F_blur + a (I - a F_blur -
    (1 - a) B_blur), first with a wide radius (on a downscaled copy), then with radius 6.
    Full-resolution work runs on strips of about `max_strip_pixels` (each with 6 rows of
    context above and below), so memory stays bounded for HD photos; every pixel sees the
    neighbourhood the whole frame would give it, so the strip size does not change the result.
    Strips without a partially transparent pixel are skipped.
    """
    height, width = alpha.shape
    rows = max(1, max_strip_pixels // width)
    strips = [
        (s0, s1) for s0, s1 in _row_ranges(height, rows)
        if ((alpha[s0:s1] > 0) & (alpha[s0:s1] < 255)).any()
    ]
    if not strips:
        return rgb
    # Soft masks (u2net's min-max normalised ones) put most pixels in the band, where gathering
    # them with a boolean index costs more than computing every pixel of a strip.
    large = max(3, min(90, max(height, width) // 8))
    wide = _wide_blurs(rgb, alpha, large, max(1, large // 8), rows)
    out = rgb.copy()  # only partially transparent pixels change
    for s0, s1 in strips:
        e0, e1 = max(0, s0 - _FINE_RADIUS), min(height, s1 + _FINE_RADIUS)
        f2 = _fuse_rows(rgb, alpha, wide, e0, e1)[s0 - e0:s1 - e0]
        f2 *= 255.0
        f2 += 0.5
        np.clip(f2, 0, 255, out=f2)
        band = (alpha[s0:s1] > 0) & (alpha[s0:s1] < 255)
        np.copyto(out[s0:s1], f2.astype(np.uint8), where=band[:, :, None])
    return out


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _over(fg: np.ndarray, a: np.ndarray, background: np.ndarray) -> np.ndarray:
    return fg * a + background * (1.0 - a)


def _subject(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Decontaminated subject colours as float32 in [0, 1]."""
    return estimate_foreground(rgb, alpha).astype(np.float32) / 255.0


def cutout(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA cut-out with edge colours decontaminated."""
    return np.dstack([estimate_foreground(rgb, alpha), alpha])


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas run on a downscaled copy (same look, a fraction of the cost)."""
    if sigma <= 0:
        return x
    h, w = x.shape[:2]
    factor = int(sigma // 8)
    if factor >= 2 and min(h, w) // factor >= 8:
        small = cv2.resize(x, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_REFLECT)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def blur_background(rgb: np.ndarray, alpha: np.ndarray, strength: float) -> np.ndarray:
    """Sharp subject over its own background blurred with Gaussian sigma = `strength` pixels.

    The blur is normalised by the background weight (1 - alpha), so the subject's colours are
    not smeared into the background around it.
    """
    image = rgb.astype(np.float32) / 255.0
    a = _unit_alpha(alpha)
    weight = 1.0 - a
    num = _gaussian(image * weight, strength)
    den = _gaussian(weight, strength)
    den = den[:, :, None] if den.ndim == 2 else den
    plain = _gaussian(image, strength)
    background = np.where(den > 1e-3, num / np.maximum(den, 1e-3), plain)
    return _to_u8(_over(_subject(rgb, alpha), a, background))


def color_background(rgb: np.ndarray, alpha: np.ndarray, color: RGB) -> np.ndarray:
    a = _unit_alpha(alpha)
    background = np.asarray(color, np.float32).reshape(1, 1, 3) / 255.0
    return _to_u8(_over(_subject(rgb, alpha), a, background))


def linear_gradient(width: int, height: int, start: RGB, end: RGB, angle: float) -> np.ndarray:
    """float32 H x W x 3 gradient; `angle` follows CSS linear-gradient (0 = bottom to top,
    90 = left to right, 180 = top to bottom)."""
    theta = math.radians(angle)
    dx, dy = math.sin(theta), -math.cos(theta)
    xs = np.arange(width, dtype=np.float32) - (width - 1) / 2.0
    ys = np.arange(height, dtype=np.float32) - (height - 1) / 2.0
    proj = xs[None, :] * dx + ys[:, None] * dy
    half = (abs(dx) * (width - 1) + abs(dy) * (height - 1)) / 2.0 or 1.0
    t = np.clip((proj / half + 1.0) / 2.0, 0.0, 1.0)[:, :, None]
    s = np.asarray(start, np.float32) / 255.0
    e = np.asarray(end, np.float32) / 255.0
    return s * (1.0 - t) + e * t


def gradient_background(
    rgb: np.ndarray, alpha: np.ndarray, start: RGB, end: RGB, angle: float
) -> np.ndarray:
    h, w = alpha.shape
    a = _unit_alpha(alpha)
    return _to_u8(_over(_subject(rgb, alpha), a, linear_gradient(w, h, start, end, angle)))


def drop_shadow(
    rgb: np.ndarray,
    alpha: np.ndarray,
    *,
    offset: tuple[int, int] = (12, 12),
    blur: float = 12.0,
    opacity: float = 0.5,
    shadow_color: RGB = (0, 0, 0),
    background: RGB | None = None,
) -> np.ndarray:
    """Subject with a soft shadow cast from its own alpha, shifted by `offset` = (dx, dy).

    With `background` None the result is RGBA (shadow and subject over transparency), otherwise
    an opaque RGB image over that colour.
    """
    h, w = alpha.shape
    a = _unit_alpha(alpha)
    shift = np.array([[1, 0, offset[0]], [0, 1, offset[1]]], np.float32)
    moved = cv2.warpAffine(alpha.astype(np.float32) / 255.0, shift, (w, h), borderValue=0.0)
    shadow_a = (np.clip(_gaussian(moved, blur), 0.0, 1.0) * opacity)[:, :, None]
    fg = _subject(rgb, alpha)
    color = np.asarray(shadow_color, np.float32).reshape(1, 1, 3) / 255.0
    if background is not None:
        base = np.broadcast_to(np.asarray(background, np.float32) / 255.0, (h, w, 3))
        return _to_u8(_over(fg, a, _over(color, shadow_a, base)))
    # Porter-Duff "over" with premultiplied colours onto a transparent canvas.
    out_a = a + shadow_a * (1.0 - a)
    premult = fg * a + color * shadow_a * (1.0 - a)
    out_rgb = np.where(out_a > 1e-6, premult / np.maximum(out_a, 1e-6), 0.0)
    return np.dstack([_to_u8(out_rgb), _to_u8(out_a)])


def parse_color(value: str) -> RGB:
    """'#RRGGBB', '#RGB', 'R,G,B' or a CSS colour name -> (r, g, b)."""
    from PIL import ImageColor

    from pipelines.errors import InvalidParameter

    text = value.strip()
    parts = text.split(",")
    try:
        if len(parts) == 3:
            rgb = tuple(int(p.strip()) for p in parts)
            if not all(0 <= c <= 255 for c in rgb):
                raise ValueError
            return rgb  # type: ignore[return-value]
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise InvalidParameter(
            f"invalid colour {value!r}: use '#RRGGBB', 'R,G,B' (0-255) or a colour name"
        ) from None
