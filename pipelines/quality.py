"""Matting quality metrics: a predicted alpha against an exactly known one (uint8 or float).

Per image: IoU of the masks at 0.5, MAE and SAD of the alpha (SAD in thousands, as the matting
literature reports it), gradient error (Rhemann et al.: the difference of Gaussian-derivative
gradient magnitudes, squared, in thousands) and the boundary F-measure (boundary pixels matched
within a tolerance). Per clip: dtSSD flicker (Erofeev et al.: the root mean square of the error
of the frame-to-frame alpha change) and the worst frame's IoU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


def _unit(alpha: np.ndarray) -> np.ndarray:
    a = np.asarray(alpha)
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of the two masks at alpha 0.5 (1.0 when both are empty)."""
    p, t = _unit(pred) >= 0.5, _unit(truth) >= 0.5
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(_unit(pred) - _unit(truth))))


def sad(pred: np.ndarray, truth: np.ndarray) -> float:
    """Sum of absolute alpha differences, in thousands."""
    return float(np.sum(np.abs(_unit(pred) - _unit(truth))) / 1000.0)


def _gradient(alpha: np.ndarray, sigma: float) -> np.ndarray:
    smooth = cv2.GaussianBlur(alpha, (0, 0), sigma)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def gradient_error(pred: np.ndarray, truth: np.ndarray, sigma: float = 1.4) -> float:
    """Sum of squared differences of the alphas' gradient magnitudes, in thousands."""
    d = _gradient(_unit(pred), sigma) - _gradient(_unit(truth), sigma)
    return float(np.sum(d * d) / 1000.0)


def _boundary(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)


def boundary_f(pred: np.ndarray, truth: np.ndarray, tolerance: int | None = None) -> float:
    """F-measure of the masks' boundaries (at alpha 0.5): a boundary pixel counts as matched when
    the other boundary passes within `tolerance` pixels (default 0.75% of the diagonal)."""
    p, t = _boundary(_unit(pred) >= 0.5), _boundary(_unit(truth) >= 0.5)
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    if tolerance is None:
        tolerance = max(1, round(0.0075 * float(np.hypot(*p.shape))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1,) * 2)
    near_t = cv2.dilate(t.astype(np.uint8), kernel).astype(bool)
    near_p = cv2.dilate(p.astype(np.uint8), kernel).astype(bool)
    precision = float((p & near_t).sum() / p.sum())
    recall = float((t & near_p).sum() / t.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Scores:
    iou: float
    mae: float
    sad: float
    grad: float
    boundary_f: float


def score(pred: np.ndarray, truth: np.ndarray) -> Scores:
    if np.shape(pred) != np.shape(truth):
        raise ValueError(f"prediction {np.shape(pred)} and truth {np.shape(truth)} differ in size")
    return Scores(iou(pred, truth), mae(pred, truth), sad(pred, truth),
                  gradient_error(pred, truth), boundary_f(pred, truth))


def dtssd(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """Temporal coherence error: mean over consecutive frames of the RMS difference between the
    predicted and the true alpha change (0 for a clip whose errors do not change)."""
    if len(preds) != len(truths):
        raise ValueError("one prediction per true frame")
    values = []
    for t in range(1, len(preds)):
        d = (_unit(preds[t]) - _unit(preds[t - 1])) - (_unit(truths[t]) - _unit(truths[t - 1]))
        values.append(float(np.sqrt(np.mean(d * d))))
    return float(np.mean(values)) if values else 0.0


def worst_iou(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """The lowest per-frame IoU of a clip (a frame that loses the subject shows here)."""
    return min(iou(p, t) for p, t in zip(preds, truths, strict=True))


@dataclass(frozen=True)
class ClipScores:
    """A clip's scores in the units RVM's authors report them (Lin et al. 2021, table 1): MAD and
    MSE of the alpha x 1e3, gradient error (here: `gradient_error` per frame, mean), dtSSD x 1e2;
    and the worst frame's IoU and the share of frames whose subject is kept (IoU >= 0.5)."""

    mad: float
    mse: float
    grad: float
    dtssd: float
    worst_iou: float
    kept: float


def clip_score(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> ClipScores:
    if len(preds) != len(truths) or not preds:
        raise ValueError("one prediction per true frame, at least one")
    diffs = [_unit(p) - _unit(t) for p, t in zip(preds, truths, strict=True)]
    ious = [iou(p, t) for p, t in zip(preds, truths, strict=True)]
    return ClipScores(
        mad=float(np.mean([np.abs(d).mean() for d in diffs])) * 1e3,
        mse=float(np.mean([(d * d).mean() for d in diffs])) * 1e3,
        grad=float(np.mean([gradient_error(p, t) for p, t in zip(preds, truths, strict=True)])),
        dtssd=dtssd(preds, truths) * 1e2,
        worst_iou=min(ious),
        kept=float(np.mean([i >= 0.5 for i in ious])))
