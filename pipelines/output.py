"""What a caller can ask of the result besides the effect: a cleaned or matting-refined mask,
the mask alone, a crop to the subject, a size cap and the file format.

- `clean_mask`: connected regions of the mask smaller than `min_area` (default 0.1 % of the
  image, at least 64 px) are dropped, and holes in the subject that small are filled.
- `refine_matting`: closed-form alpha matting (pymatting, as rembg's `alpha_matting`) on the
  uncertain band around the model's edge: pixels the model is sure of (alpha >= 240 or <= 15)
  and farther than `band` px from the edge keep their value; the band is solved from the
  image's colours. Images over `max_pixels` are solved at a reduced size and the band's alpha
  scaled back, which bounds the time (measured in docs/benchmarks.md).
- `subject_box` / `crop`: the subject's bounding box (alpha above 16 of 255: a model's faint
  background noise is not subject; for a transparent result, its own alpha, so a drop
  shadow is kept) plus a margin in pixels or percent of the box's size, clamped to the image.
- `fit` caps the longest side (never upscales); `encode` writes png, lossless webp or jpg (jpg
  only for opaque results).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, Field, model_validator

from pipelines.errors import InvalidParameter
from pipelines.images import encode_image, encode_png

Format = Literal["png", "webp", "jpg"]
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}
_MARGIN = re.compile(r"^\s*(\d{1,5}(?:\.\d+)?)\s*(%?)\s*$")


class OutputOptions(BaseModel):
    """The options every image API takes besides its format (`format` on the image endpoints
    and HD, `output_format` on /v1/jobs); the defaults give the v1 contracts' result."""

    output: Literal["rgba", "mask"] = Field("rgba", description=(
        "rgba: the effect's image; mask: the alpha alone, an 8-bit grey image."))
    crop: bool = Field(False, description="Crop to the subject's bounding box (plus margin).")
    crop_margin: str = Field("0", max_length=12, description=(
        "Margin around the subject when cropping: pixels ('20') or percent of the subject's "
        "box ('5%'); at most 10000 px or 100%."))
    max_size: int | None = Field(None, ge=16, le=20000, description=(
        "Longest side of the result in pixels (aspect kept; never upscaled)."))
    refine: Literal["none", "matting"] = Field("none", description=(
        "matting: closed-form alpha matting on the uncertain band around the model's edge "
        "(hair, fur); slower (docs/benchmarks.md)."))
    clean_mask: bool = Field(False, description=(
        "Drop specks and fill pinholes smaller than 0.1 % of the image (at least 64 px)."))

    @model_validator(mode="after")
    def _check_margin(self):
        parse_margin(self.crop_margin)  # InvalidParameter (a ValueError) for a bad margin
        return self

    def output_only(self) -> OutputOptions:
        """These options alone (a subclass's other fields dropped): what a job stores."""
        return OutputOptions.model_validate(self.model_dump(include=set(OutputOptions.model_fields)))

    def changed_fields(self) -> list[str]:
        """The option fields set to something other than their default."""
        default = OutputOptions()
        return [n for n in OutputOptions.model_fields if getattr(self, n) != getattr(default, n)]


def prepare_mask(rgb: np.ndarray, mask: np.ndarray, options: OutputOptions) -> np.ndarray:
    """The model's mask cleaned and refined as the options ask."""
    if options.clean_mask:
        mask = clean_mask(mask)
    if options.refine == "matting":
        mask = refine_matting(rgb, mask)
    return mask


def crop_to_subject(pixels: np.ndarray, visible: np.ndarray, margin: str) -> np.ndarray:
    x0, y0, x1, y1 = subject_box(visible, margin)
    return pixels[y0:y1, x0:x1]


def finish(rgb: np.ndarray, mask: np.ndarray, render: Callable[[np.ndarray], np.ndarray],
           options: OutputOptions, fmt: Format,
           alpha: Callable[[np.ndarray], np.ndarray] = lambda m: m) -> bytes:
    """The encoded result of an image endpoint: the mask cleaned and refined as asked, then
    `render(mask)` (the effect) or the mask alone (`alpha(mask)`: e.g. kept within the input's
    own transparency), cropped to the subject (a transparent result's own alpha, so a drop
    shadow stays), size-capped and encoded."""
    mask = prepare_mask(rgb, mask, options)
    pixels = alpha(mask) if options.output == "mask" else render(mask)
    if options.crop:
        visible = pixels[:, :, 3] if pixels.ndim == 3 and pixels.shape[2] == 4 else alpha(mask)
        pixels = crop_to_subject(pixels, visible, options.crop_margin)
    return encode(fit(pixels, options.max_size), fmt)


def min_area_for(height: int, width: int) -> int:
    return max(64, round(0.001 * height * width))


def clean_mask(mask: np.ndarray, min_area: int | None = None) -> np.ndarray:
    """Drop islands and fill holes smaller than `min_area` pixels (at alpha 0.5)."""
    h, w = mask.shape
    area = min_area_for(h, w) if min_area is None else min_area
    out = mask.copy()
    solid = (mask > 127).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    small = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] < area]
    if small:
        out[np.isin(labels, small)] = 0
    empty = (out <= 127).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(empty, connectivity=4)
    holes = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] < area
             and stats[i, cv2.CC_STAT_LEFT] > 0 and stats[i, cv2.CC_STAT_TOP] > 0
             and stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH] < w
             and stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT] < h]
    if holes:
        out[np.isin(labels, holes)] = 255
    return out


def refine_matting(rgb: np.ndarray, mask: np.ndarray, band: int = 10,
                   max_pixels: int = 1_000_000) -> np.ndarray:
    """The mask with its uncertain band re-solved by closed-form matting (see the module)."""
    from pymatting import estimate_alpha_cf  # heavy import, only when asked for

    sure_fg = mask >= 240
    sure_bg = mask <= 15
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1,) * 2)
    fg = cv2.erode(sure_fg.astype(np.uint8), kernel).astype(bool)
    bg = cv2.erode(sure_bg.astype(np.uint8), kernel).astype(bool)
    unknown = ~(fg | bg)
    if not unknown.any() or not fg.any() or not bg.any():
        return mask
    h, w = mask.shape
    scale = min(1.0, (max_pixels / (h * w)) ** 0.5)
    full = np.full((h, w), 0.5, np.float64)
    full[fg], full[bg] = 1.0, 0.0
    image: np.ndarray = rgb.astype(np.float64) / 255.0
    trimap: np.ndarray = full
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        trimap = cv2.resize(full, size, interpolation=cv2.INTER_NEAREST)
        if not (trimap == 1.0).any() or not (trimap == 0.0).any():
            return mask  # a thin sure region vanished in the shrink: nothing to solve from
    try:
        alpha = estimate_alpha_cf(image, trimap)
    except ValueError:  # pymatting: no foreground or background left to solve from
        return mask
    if scale < 1.0:
        alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    out = mask.copy()
    out[unknown] = np.rint(np.clip(alpha[unknown], 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def parse_margin(text: str) -> tuple[float, bool]:
    """'12' -> (12, False): pixels; '5%' -> (5, True): percent of the subject's box."""
    m = _MARGIN.fullmatch(text)
    if m is None:
        raise InvalidParameter("crop_margin must be pixels ('20') or a percentage ('5%').")
    value, percent = float(m.group(1)), bool(m.group(2))
    if (percent and value > 100) or (not percent and value > 10000):
        raise InvalidParameter("crop_margin: at most 100% or 10000 px.")
    return value, percent


SUBJECT_ALPHA = 16  # alpha above this is subject, for the crop


def subject_box(alpha: np.ndarray, margin: str = "0") -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends, of the subject's pixels plus the margin."""
    value, percent = parse_margin(margin)
    ys, xs = np.nonzero(alpha > SUBJECT_ALPHA)
    if len(xs) == 0:
        raise InvalidParameter("crop: the mask is empty, so there is no subject to crop to.",
                               {"field": "crop"})
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    mx = value * (x1 - x0) / 100 if percent else value
    my = value * (y1 - y0) / 100 if percent else value
    h, w = alpha.shape
    return (max(0, round(x0 - mx)), max(0, round(y0 - my)), min(w, round(x1 + mx)),
            min(h, round(y1 + my)))


def fit(image: np.ndarray, max_size: int | None) -> np.ndarray:
    """Scaled down (Lanczos, aspect kept) so the longest side is at most `max_size`."""
    h, w = image.shape[:2]
    if not max_size or max(h, w) <= max_size:
        return image
    s = max_size / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def encode(image: np.ndarray, fmt: str, webp_lossless: bool = True) -> bytes:
    """png (the service's fast encoder), webp (keeps alpha exactly; the colours lossless, or
    at quality 90 for the async jobs' large images: `webp_lossless=False`) or jpg (quality 92;
    refused for an image with transparency)."""
    if fmt == "png":
        return encode_png(image)
    if fmt == "webp" and not webp_lossless:
        return encode_image(image, "webp")
    buf = io.BytesIO()
    im = Image.fromarray(image)
    if fmt == "webp":
        im.save(buf, "WEBP", lossless=True, quality=80, method=4)
    elif fmt == "jpg":
        if image.ndim == 3 and image.shape[2] == 4:
            if int(image[:, :, 3].min()) < 255:
                raise InvalidParameter(
                    "format: jpg cannot carry transparency; give a background colour "
                    "(the color effect, or bg_color with shadow) or use png or webp.",
                    {"field": "format"})
            im = im.convert("RGB")
        im.save(buf, "JPEG", quality=92)
    else:
        raise InvalidParameter(f"format: {fmt!r} is not one of png, webp, jpg.",
                               {"field": "format"})
    return buf.getvalue()
