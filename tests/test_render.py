"""The job renderer's pure parts: in-order masks with a bounded window of frames in flight."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipelines.render import iter_masks


def test_masks_come_back_in_order_with_a_bounded_window():
    in_flight, peak = 0, 0
    lock = threading.Lock()
    rng = random.Random(0)

    def compute(i: int) -> np.ndarray:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(rng.uniform(0, 0.01))  # out-of-order completion
        with lock:
            in_flight -= 1
        return np.full((2, 2), i % 256, np.uint8)

    with ThreadPoolExecutor(8) as pool:
        def submit(i: int):
            return pool.submit(compute, i).result

        got = [(i, int(mask[0, 0])) for i, mask in iter_masks(range(50), submit, window=4)]
    assert got == [(i, i % 256) for i in range(50)]
    assert peak <= 4


def test_frames_are_consumed_lazily():
    consumed = []

    def frames():
        for i in range(100):
            consumed.append(i)
            yield i

    stream = iter_masks(frames(), lambda i: (lambda: np.zeros((1, 1), np.uint8)), window=3)
    next(stream)
    assert len(consumed) == 3  # only the window has been read from the decoder
