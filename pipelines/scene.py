"""Putting a cut-out into a scene: procedural studio backdrops, a contact shadow cast from the
alpha, light wrap at the edges and optional colour matching. Used by `/image/backdrop/v1` (a
scene made here or uploaded) and by `/image/generate/v1` (a scene a generator painted).

Nothing here is generative: the backdrops are plain numpy (sweeps, gradients, soft bokeh).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from pipelines.effects import RGB

SceneKind = Literal["sweep", "gradient", "bokeh"]


# ---- procedural scenes -------------------------------------------------------------------------

def sweep(width: int, height: int, color: RGB) -> np.ndarray:
    """A photo studio's paper sweep: the colour, lit from above, darker towards the floor
    line at ~70 % of the height and a little lighter on the floor, with a soft vignette."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    wall = 1.08 - 0.25 * np.clip(y / 0.7, 0, 1) ** 1.5
    floor = 0.83 + 0.12 * np.clip((y - 0.7) / 0.3, 0, 1)
    light = np.where(y < 0.7, wall, floor) * (1.0 - 0.18 * x ** 2)
    return _shade(color, light)


def gradient(width: int, height: int, top: RGB, bottom: RGB) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    out = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.broadcast_to(out, (height, width, 3)).round().astype(np.uint8).copy()


def bokeh(width: int, height: int, color: RGB, seed: int = 0) -> np.ndarray:
    """Out-of-focus lights over a dark version of the colour (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(color, np.float32) * 0.35
    canvas = np.broadcast_to(base, (height, width, 3)).copy()
    lights: np.ndarray = np.zeros((height, width, 3), np.float32)
    side = max(width, height)
    for _ in range(int(12 + 30 * rng.random())):
        r = int(side * (0.02 + 0.06 * rng.random()))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        tint = np.clip(np.asarray(color, np.float32) * (0.6 + 0.8 * rng.random())
                       + 255 * 0.3 * rng.random(3), 0, 255)
        cv2.circle(lights, (cx, cy), r, tuple(float(v) * (0.25 + 0.5 * rng.random())
                                              for v in tint), -1, cv2.LINE_AA)
    lights = cv2.GaussianBlur(lights, (0, 0), side * 0.01)
    return np.clip(canvas + lights, 0, 255).astype(np.uint8)


def make_scene(kind: SceneKind, width: int, height: int, color: RGB, color2: RGB,
               seed: int = 0) -> np.ndarray:
    if kind == "sweep":
        return sweep(width, height, color)
    if kind == "gradient":
        return gradient(width, height, color, color2)
    return bokeh(width, height, color, seed)


def _shade(color: RGB, light: np.ndarray) -> np.ndarray:
    return np.clip(light[..., None] * np.asarray(color, np.float32), 0, 255).astype(np.uint8)


def fit_scene(scene: np.ndarray, width: int, height: int) -> np.ndarray:
    """Cover `width` x `height` with the scene (scaled to fill, centred, cropped)."""
    h, w = scene.shape[:2]
    s = max(width / w, height / h)
    nw, nh = max(width, round(w * s)), max(height, round(h * s))
    big = cv2.resize(scene, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    x0, y0 = (nw - width) // 2, (nh - height) // 2
    return np.ascontiguousarray(big[y0:y0 + height, x0:x0 + width])


# ---- placing the subject -----------------------------------------------------------------------

def contact_shadow(alpha: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Darkening (0..1, float32) under the subject: its alpha squashed towards its base line,
    blurred more the further it falls from the base. 0 where the subject has no base."""
    h, w = alpha.shape
    rows = np.nonzero(alpha.max(axis=1) > 127)[0]
    if rows.size == 0 or opacity <= 0:
        return np.zeros((h, w), np.float32)
    base, top = int(rows[-1]), int(rows[0])
    height = max(1, base - top)
    a = alpha.astype(np.float32) / 255
    squash = max(1, height // 8)  # the footprint: the subject flattened to 1/8 of its height
    foot = cv2.resize(a[top:base + 1], (w, squash), interpolation=cv2.INTER_AREA)
    shadow = np.zeros((h, w), np.float32)
    y0 = max(0, base - squash // 2)
    y1 = min(h, y0 + squash)
    shadow[y0:y1] = foot[: y1 - y0]
    near = cv2.GaussianBlur(shadow, (0, 0), max(1.0, height * 0.01))
    far = cv2.GaussianBlur(shadow, (0, 0), max(1.0, height * 0.05))
    return np.clip((0.6 * near + 0.4 * far) * opacity * 1.6, 0, opacity)


def match_colors(rgb: np.ndarray, alpha: np.ndarray, scene: np.ndarray,
                 strength: float) -> np.ndarray:
    """Move the subject's mean and contrast per channel (in Lab) towards the scene's."""
    if strength <= 0:
        return rgb
    inside = alpha > 127
    if inside.sum() < 16:
        return rgb
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref = cv2.cvtColor(scene, cv2.COLOR_RGB2LAB).astype(np.float32).reshape(-1, 3)
    sub = lab[inside]
    mean, std = sub.mean(0), sub.std(0) + 1e-3
    target_mean = mean + (ref.mean(0) - mean) * 0.5  # halfway: keep the subject's identity
    target_std = std * (1 + (ref.std(0) / std - 1) * 0.3)
    moved = (lab - mean) * (target_std / std) + target_mean
    out = lab + (moved - lab) * strength
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def place(rgb: np.ndarray, alpha: np.ndarray, scene: np.ndarray, *, shadow_opacity: float = 0.5,
          light_wrap: float = 0.3, color_match: float = 0.0) -> np.ndarray:
    """The subject over the scene (same size): shadow under it, the scene's light wrapped onto
    its semi-transparent edge, optionally colour-matched. Where alpha is 255 and colour
    matching is off, the output is the subject's own pixels, exactly."""
    scene = scene.astype(np.float32)
    dark = contact_shadow(alpha, shadow_opacity)
    scene *= (1 - dark)[..., None]
    subject: np.ndarray = match_colors(rgb, alpha, scene.astype(np.uint8),
                                       color_match).astype(np.float32)
    a = alpha.astype(np.float32)[..., None] / 255
    if light_wrap > 0:
        h, w = alpha.shape
        glow = cv2.GaussianBlur(scene, (0, 0), max(1.0, 0.01 * max(h, w)))
        edge = (1 - a) * a * 4 * light_wrap  # 0 inside and outside, up to light_wrap on the edge
        subject = subject * (1 - edge) + glow * edge
    out: np.ndarray = subject * a + scene * (1 - a)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if color_match <= 0:
        solid = alpha == 255
        out[solid] = rgb[solid]
    return out
