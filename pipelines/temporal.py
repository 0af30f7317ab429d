"""Temporal smoothing of per-frame alpha masks for video (streaming, O(1 frame) of state).

Motion-gated recursive filter: out_t = out_{t-1} + w * (mask_t - out_{t-1}). Where the image did
not change since the last frame, the truth did not either, so mask changes there are flicker:
w = 1 - strength averages them away. Where the image changed (moving subject, its edges,
uncovered background) w = 1: the new mask is kept and moving edges are not smeared. The gate:
max-over-channels colour change on frames downscaled 4x (fast; averages sensor/codec noise),
dilated then box-blurred (soft seams), smoothstep from 0.5x to 1.5x `motion_threshold`, upscaled
bilinearly.

Two guards keep the subject whole on fast motion:
- a large mask change (`jump_threshold`, default 96 of 255) is taken at once even where the
  image looks static: a limb moving over a background of its own colour changes the image
  little, and averaging there left a fading "ghost" limb at its old place for several frames;
  flicker is small oscillation around edges and is still averaged;
- a frame where the model loses most of the subject (the mask's mass falls below
  `dropout_ratio` of the last frame's) is a model dropout unless there was a cut (the frames'
  colour histograms differ: a camera pan keeps them alike, a cut does not) or the image
  changed where the subject was and nowhere else (it really left). A subject does not vanish
  between two frames of one shot: the last mask is carried over (joined with the new one) for
  at most `max_hold` frames in a row.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) * (1.0 / max(hi - lo, 1e-6)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """L1 distance (0..2) of two frames' 8x8x8 colour histograms: small across a pan or a
    moving subject, large across a cut."""
    def hist(x: np.ndarray) -> np.ndarray:
        h = cv2.calcHist([x], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
        return h / max(float(h.sum()), 1.0)

    return float(np.abs(hist(a) - hist(b)).sum())


class MaskSmoother:
    """Call once per frame, in order: `smoother(rgb, mask) -> smoothed mask` (uint8 H x W)."""

    def __init__(
        self,
        strength: float = 0.6,
        motion_threshold: float = 12.0,
        *,
        motion_downscale: int = 4,
        jump_threshold: float | None = 96.0,
        dropout_ratio: float = 0.5,
        max_hold: int = 3,
    ) -> None:
        """`strength`: weight of the past where the image is static (0 = off, < 1).
        `motion_threshold`: colour change (0..255, max over channels, after downscaling and
        blurring) around which a pixel counts as moving; the gate ramps from 0.5x to 1.5x it.
        `motion_downscale`: the motion map is computed at 1/N size (1 = full size).
        `jump_threshold`: mask change (0..255) above which the new mask is taken even where the
        image is static; None disables it.
        `dropout_ratio`, `max_hold`: a mask with less than this share of the last mask's mass,
        within one shot, is joined with the last one, for at most `max_hold` frames in a row
        (0 disables it)."""
        if not 0.0 <= strength < 1.0:
            raise ValueError("strength must be in [0, 1)")
        if motion_threshold <= 0:
            raise ValueError("motion_threshold must be > 0")
        if motion_downscale < 1:
            raise ValueError("motion_downscale must be >= 1")
        self.strength = float(strength)
        self.motion_threshold = float(motion_threshold)
        self.motion_downscale = int(motion_downscale)
        self.jump_threshold = None if jump_threshold is None else float(jump_threshold)
        self.dropout_ratio = float(dropout_ratio)
        self.max_hold = int(max_hold)
        self._held = 0  # dropout frames carried over in a row
        self._prev_small: np.ndarray | None = None  # uint8 h x w x 3, downscaled frame
        self._prev_out: np.ndarray | None = None  # float32 H x W, smoothed alpha (0..255)

    def reset(self) -> None:
        """Forget the past (call at a cut or a new clip)."""
        self._prev_small = None
        self._prev_out = None
        self._held = 0

    def _small(self, rgb: np.ndarray) -> np.ndarray:
        """Area-downscale by `motion_downscale`: 2x bilinear halvings (each an exact 2x2 mean,
        much faster than INTER_AREA), then INTER_AREA for any odd remainder."""
        n = self.motion_downscale
        while n % 2 == 0 and min(rgb.shape[:2]) >= 2:
            h, w = rgb.shape[:2]
            rgb = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_LINEAR)
            n //= 2
        if n > 1:
            h, w = rgb.shape[:2]
            size = (max(1, w // n), max(1, h // n))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        return rgb

    def motion_weight(self, small: np.ndarray, full_size: tuple[int, int]) -> np.ndarray:
        """Weight in [0, 1] of 'moving' per pixel at full size (width, height)."""
        assert self._prev_small is not None
        c = cv2.split(cv2.absdiff(small, self._prev_small))
        diff: np.ndarray = cv2.max(cv2.max(c[0], c[1]), c[2]).astype(np.float32)
        # Dilate first, so a thin change (an edge moving ~1 px) keeps its peak through the blur
        # (blurring first lets slow edges lag); the blur then softens the gate's outline.
        diff = cv2.dilate(diff, np.ones((3, 3), np.uint8))
        diff = cv2.blur(diff, (3, 3))
        t = self.motion_threshold
        gate: np.ndarray = _smoothstep(diff, 0.5 * t, 1.5 * t).astype(np.float32)
        if gate.shape[::-1] != full_size:
            gate = cv2.resize(gate, full_size, interpolation=cv2.INTER_LINEAR)
        return gate

    def __call__(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("rgb must be a uint8 H x W x 3 array")
        if mask.shape != rgb.shape[:2] or mask.dtype != np.uint8:
            raise ValueError("mask must be a uint8 H x W array matching the frame")
        small = self._small(rgb)
        m = mask.astype(np.float32)
        prev = self._prev_out
        if (prev is None or self._prev_small is None or prev.shape != m.shape
                or self._prev_small.shape != small.shape):
            self._prev_small, self._prev_out = small, m
            return mask.copy()
        gate = self.motion_weight(small, (m.shape[1], m.shape[0]))
        if self._is_dropout(m, prev, small, gate):
            self._held += 1
            out = cv2.max(prev, m)
            self._prev_small, self._prev_out = small, out
            return cv2.convertScaleAbs(out)
        self._held = 0
        delta = cv2.subtract(m, prev)
        if self.jump_threshold is not None:
            j = self.jump_threshold
            gate = np.maximum(gate, _smoothstep(np.abs(delta), 0.75 * j, 1.25 * j))
        # w = (1 - s) + s * gate: the new mask's weight, 1 - strength where static, 1 where moving.
        s = self.strength
        w = cv2.addWeighted(gate, s, gate, 0.0, 1.0 - s)
        out = cv2.add(prev, cv2.multiply(w, delta))
        self._prev_small, self._prev_out = small, out
        return cv2.convertScaleAbs(out)  # rounds and saturates to uint8


    def _is_dropout(self, mask: np.ndarray, prev: np.ndarray, small: np.ndarray,
                    gate: np.ndarray) -> bool:
        """Most of the subject gone from the mask, with no cut since the last frame and not
        because the subject's region alone changed (the subject really left it)."""
        if self.max_hold <= 0 or self._held >= self.max_hold:
            return False
        prev_mass, mass = float(prev.sum()), float(mask.sum())
        if prev_mass < 0.005 * 255.0 * prev.size or mass >= self.dropout_ratio * prev_mass:
            return False
        assert self._prev_small is not None
        if _histogram_distance(small, self._prev_small) >= 0.5:
            return False  # a cut
        region = prev > 127
        inside = float(gate[region].mean()) if region.any() else 0.0
        outside = float(gate[~region].mean()) if (~region).any() else 0.0
        return not (inside > 0.5 and outside < 0.25)


def mean_abs_alpha_change(masks: Iterable[np.ndarray]) -> float:
    """Mean over consecutive pairs of mean |a_t - a_{t-1}| / 255 (0 for fewer than 2 masks)."""
    total, pairs, prev = 0.0, 0, None
    for a in masks:
        cur = np.asarray(a, dtype=np.float32)
        if prev is not None:
            total += float(np.mean(np.abs(cur - prev))) / 255.0
            pairs += 1
        prev = cur
    return total / pairs if pairs else 0.0
