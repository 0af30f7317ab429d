"""The subject detector (`pipelines.detect`) as a Serve deployment: what `model=auto` asks
before it chooses. Callers send the image already resized to the detector's input
(`pipelines.detect.prepare`, as uint8) and the original size, and get `Detection`s back."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from deployments.metrics import MODEL_INFERENCE_SECONDS
from pipelines.detect import Detection, SubjectDetector
from serve_app.core.model_bucket import local_weights
from serve_app.core.settings import get_settings


class SubjectDetection:
    def __init__(self, weights_path: str, providers: list[str] | None = None,
                 intra_op_threads: int = 1, min_score: float = 0.1) -> None:
        weights_path = local_weights(weights_path, get_settings())  # with a models bucket
        self.detector = SubjectDetector(weights_path, tuple(providers or ["CPUExecutionProvider"]),
                                        intra_op_threads)
        self.min_score = min_score
        self.detector.detect(np.zeros((64, 64, 3), np.uint8))  # allocate the arena at start-up

    async def detect(self, prepared: np.ndarray, width: int, height: int) -> list[Detection]:
        started = time.perf_counter()
        found = await asyncio.to_thread(self.detector.run, prepared.astype(np.float32), width,
                                        height, self.min_score)
        MODEL_INFERENCE_SECONDS.observe(time.perf_counter() - started, {
            "model": "detector", "pool": "detector", "resolution": "512"})
        return found
