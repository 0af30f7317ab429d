"""Background effects: cut-out, blur, colour, gradient and drop shadow.

All functions take the original RGB image (uint8 H x W x 3) and an alpha mask (uint8 H x W) and
return a uint8 H x W x 3 (opaque) or H x W x 4 (transparent) array at full resolution.

Edges: a semi-transparent edge pixel of the photo is a mix of subject and old background colour.
Pasting it as is leaves a fringe of the old background around the subject. `estimate_foreground`
recovers the subject's own colour there with Blur-Fusion (Forte & Pitie, "Approximate Fast
Foreground Colour Estimation", ICIP 2021): two passes of box-filtered foreground/background
estimates and a local correction. Every compositor uses it.
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


def _box_downscaled(x: np.ndarray, r: int, factor: int) -> np.ndarray:
    """A wide box blur computed on a `factor`-times smaller copy: same look, ~factor^2 cheaper."""
    if factor <= 1:
        return _box(x, r)
    h, w = x.shape[:2]
    small = cv2.resize(x, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    small = _box(small, max(1, r // factor))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def estimate_foreground(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The subject's own colours (uint8 H x W x 3): edge pixels with the old background removed.

    Only partially transparent pixels change. Blur-Fusion: F = F_blur + a (I - a F_blur -
    (1 - a) B_blur), first with a wide radius (on a downscaled copy), then with radius 6.
    """
    band = (alpha > 0) & (alpha < 255)
    if not band.any():
        return rgb
    eps = 1e-5
    image = rgb.astype(np.float32) * np.float32(1 / 255)
    a = alpha.astype(np.float32) * np.float32(1 / 255)
    a3 = a[:, :, None]
    opaque = alpha == 255
    # Whole-frame arithmetic: soft masks (u2net's min-max normalised ones) put most pixels in
    # the band, where gathering them with a boolean index costs more than computing every pixel.

    # Pass 1: wide radius, on a downscaled copy.
    large = max(3, min(90, max(rgb.shape[:2]) // 8))
    factor = max(1, large // 8)
    weighted_f = image * a3
    blurred_a = _box_downscaled(a, large, factor)[:, :, None]
    f_blur = _box_downscaled(weighted_f, large, factor)
    f_blur /= blurred_a + eps
    b_blur = _box_downscaled(image - weighted_f, large, factor)
    b_blur /= (1.0 + eps) - blurred_a
    f1 = a3 * (image - a3 * f_blur - (1.0 - a3) * b_blur)
    f1 += f_blur
    np.clip(f1, 0.0, 1.0, out=f1)
    f1[opaque] = image[opaque]  # opaque pixels are the photo itself

    # Pass 2: radius 6, fed with pass 1's foreground.
    f1 *= a3
    blurred_a = _box(a, 6)[:, :, None]
    f_blur2 = _box(f1, 6)
    f_blur2 /= blurred_a + eps
    b_blur2 = _box(b_blur * (1.0 - a3), 6)
    b_blur2 /= (1.0 + eps) - blurred_a
    f2 = a3 * (image - a3 * f_blur2 - (1.0 - a3) * b_blur2)
    f2 += f_blur2

    out = rgb.copy()  # only partially transparent pixels change
    out[band] = np.clip(f2[band] * 255.0 + 0.5, 0, 255).astype(np.uint8)
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
    shift = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
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
