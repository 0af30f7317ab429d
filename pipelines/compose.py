"""Placing a cut-out on a canvas: the `background` and `composition` of /v1/jobs (spec 001).

    "background": {"type": "transparent"}            or {"type": "color", "color": "#RRGGBB"}
    "composition": {"canvas": {"width": 1920, "height": 1080},
                    "foreground": {"anchor": "center", "scale": 1, "offset": {"x": 0, "y": 0}}}

The foreground (the whole cut-out, times `scale`) is placed so that its anchor point meets the
canvas's same anchor point, then moved by `offset` (x right, y down, in canvas pixels); what
falls outside the canvas is clipped. Only the visible part is resampled (Lanczos on
premultiplied alpha, so transparent pixels' colours cannot fringe the edges), so a large scale
costs no more than the canvas. The result is RGBA over a transparent background, RGB over a
colour.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.effects import RGB, parse_color
from pipelines.images import flatten

MAX_CANVAS_SIDE = 16384
MAX_SCALE = 16.0

Anchor = Literal["center", "top-left", "top", "top-right", "left", "right",
                 "bottom-left", "bottom", "bottom-right"]
# Anchor -> (x, y) position as halves of the free space: 0 start, 1 middle, 2 end.
_ANCHOR_HALVES: dict[str, tuple[int, int]] = {
    "top-left": (0, 0), "top": (1, 0), "top-right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom-left": (0, 2), "bottom": (1, 2), "bottom-right": (2, 2),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Background(_Strict):
    type: Literal["transparent", "color"] = "transparent"
    color: str | None = Field(None, description="'#RRGGBB', 'R,G,B' or a CSS colour name.")

    @model_validator(mode="after")
    def _check_color(self) -> Background:
        if self.type == "color":
            if self.color is None:
                raise ValueError("background.color is required when background.type is 'color'")
            parse_color(self.color)  # InvalidParameter is a ValueError: a validation error
        elif self.color is not None:
            raise ValueError("background.color is only allowed when background.type is 'color'")
        return self

    @property
    def rgb(self) -> RGB | None:
        """The colour as (r, g, b); None for a transparent background."""
        return parse_color(self.color) if self.type == "color" and self.color else None


class Canvas(_Strict):
    width: int = Field(ge=1, le=MAX_CANVAS_SIDE)
    height: int = Field(ge=1, le=MAX_CANVAS_SIDE)


class Offset(_Strict):
    x: int = Field(0, ge=-MAX_CANVAS_SIDE, le=MAX_CANVAS_SIDE)
    y: int = Field(0, ge=-MAX_CANVAS_SIDE, le=MAX_CANVAS_SIDE)


class Foreground(_Strict):
    anchor: Anchor = "center"
    scale: float = Field(1.0, gt=0, le=MAX_SCALE, allow_inf_nan=False)
    offset: Offset = Offset()


class Composition(_Strict):
    canvas: Canvas | None = Field(None, description="Output size; None keeps the input's size.")
    foreground: Foreground = Foreground()


def _visible_foreground(cutout: np.ndarray, size: tuple[int, int],
                        box: tuple[int, int, int, int]) -> np.ndarray:
    """The part `box` (x0, y0, x1, y1 in the scaled foreground's pixels) of the cut-out resized
    to `size`, without building the rest of it. Same pixels as resizing it all and cropping."""
    h, w = cutout.shape[:2]
    fw, fh = size
    x0, y0, x1, y1 = box
    if (fw, fh) == (w, h):
        return cutout[y0:y1, x0:x1]
    sx, sy = w / fw, h / fh
    source = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    # Pillow resizes RGBA premultiplied by alpha.
    im = Image.fromarray(cutout, "RGBA").resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS,
                                                box=source)
    return np.asarray(im)


def compose(cutout_rgba: np.ndarray, background: Background,
            composition: Composition | None) -> np.ndarray:
    """The cut-out (uint8 H x W x 4) placed on the canvas: RGBA for a transparent background,
    RGB for a colour one. No composition and a transparent background: the cut-out itself."""
    if cutout_rgba.ndim != 3 or cutout_rgba.shape[2] != 4 or cutout_rgba.dtype != np.uint8:
        raise ValueError(f"expected a uint8 H x W x 4 cut-out, got {cutout_rgba.dtype} "
                         f"{cutout_rgba.shape}")
    color = background.rgb
    if composition is None:
        return cutout_rgba if color is None else flatten(cutout_rgba, color)

    h, w = cutout_rgba.shape[:2]
    canvas = composition.canvas or Canvas(width=w, height=h)
    fg = composition.foreground
    fw, fh = max(1, int(w * fg.scale + 0.5)), max(1, int(h * fg.scale + 0.5))
    hx, hy = _ANCHOR_HALVES[fg.anchor]
    left = (canvas.width - fw) * hx // 2 + fg.offset.x
    top = (canvas.height - fh) * hy // 2 + fg.offset.y

    if color is None:
        out = np.zeros((canvas.height, canvas.width, 4), np.uint8)
    else:
        out = np.empty((canvas.height, canvas.width, 3), np.uint8)
        out[:] = color
    # The canvas rectangle the foreground covers, clipped to the canvas.
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(canvas.width, left + fw), min(canvas.height, top + fh)
    if x0 >= x1 or y0 >= y1:
        return out  # entirely off the canvas
    part = _visible_foreground(cutout_rgba, (fw, fh), (x0 - left, y0 - top, x1 - left, y1 - top))
    # "Over" onto a transparent canvas leaves the foreground as it is.
    out[y0:y1, x0:x1] = part if color is None else flatten(part, color)
    return out
