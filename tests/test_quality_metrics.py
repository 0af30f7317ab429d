"""The quality benchmark's metrics on hand-made masks whose scores are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import quality


def square(size: int = 20, x0: int = 5, x1: int = 15) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[x0:x1, x0:x1] = 255
    return m


def test_iou_mae_sad_on_shifted_squares():
    truth = square()  # 10 x 10 = 100 pixels
    pred = np.roll(truth, 5, axis=1)  # half of it overlaps: 50 / 150
    assert quality.iou(pred, truth) == pytest.approx(50 / 150)
    assert quality.mae(pred, truth) == pytest.approx(100 / 400)  # 100 wrong pixels of 400
    assert quality.sad(pred, truth) == pytest.approx(100 / 1000)
    assert quality.iou(truth, truth) == 1.0 and quality.mae(truth, truth) == 0.0
    empty = np.zeros_like(truth)
    assert quality.iou(empty, empty) == 1.0 and quality.iou(empty, truth) == 0.0


def test_soft_alpha_counts_partially():
    truth = np.full((10, 10), 0.5, np.float32)
    pred = np.full((10, 10), 0.75, np.float32)
    assert quality.mae(pred, truth) == pytest.approx(0.25)
    assert quality.sad(pred, truth) == pytest.approx(100 * 0.25 / 1000)


def test_gradient_error_sees_a_blurred_edge_not_a_constant_offset():
    truth = square(40, 10, 30).astype(np.float32) / 255
    assert quality.gradient_error(truth, truth) == 0.0
    import cv2
    blurred = cv2.GaussianBlur(truth, (0, 0), 3)
    assert quality.gradient_error(blurred, truth) > 0.001
    # a constant offset changes no gradient
    assert quality.gradient_error(np.clip(truth + 0.1, 0, 1.1), truth) == pytest.approx(0, abs=1e-9)


def test_boundary_f_tolerates_a_pixel_and_not_a_shift():
    truth = square(100, 20, 80)
    one_px = np.roll(truth, 1, axis=0)
    assert quality.boundary_f(one_px, truth, tolerance=1) == 1.0
    far = np.roll(truth, 10, axis=0)  # top and bottom edges 10 px off: only the sides match
    f = quality.boundary_f(far, truth, tolerance=1)
    assert 0.3 < f < 0.8
    assert quality.boundary_f(np.zeros_like(truth), truth) == 0.0


def test_clip_metrics_flicker_and_worst_frame():
    truths = [square() for _ in range(4)]
    steady = [np.roll(t, 2, axis=1) for t in truths]  # always off by the same amount
    assert quality.dtssd(steady, truths) == 0.0
    flicker = [t if i % 2 == 0 else np.zeros_like(t) for i, t in enumerate(truths)]
    # every change is the whole square appearing or vanishing: RMS = sqrt(100 / 400) = 0.5
    assert quality.dtssd(flicker, truths) == pytest.approx(0.5)
    assert quality.worst_iou(flicker, truths) == 0.0
    assert quality.worst_iou(truths, truths) == 1.0
    with pytest.raises(ValueError):
        quality.score(square(20), square(30))
