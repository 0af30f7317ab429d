"""The AI background generator as a Serve deployment (its own pool, a GPU in production)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from deployments.metrics import MODEL_INFERENCE_SECONDS, resolution_bucket
from pipelines.generate import DiffusersInpainter, GenerateOptions, generate


class BackgroundGenerator:
    def __init__(self, model_dir: str, device: str = "cpu", dtype: str = "auto") -> None:
        self.inpainter = DiffusersInpainter(model_dir, device=device, dtype=dtype)
        self._lock = asyncio.Lock()  # one diffusion at a time per replica (it fills the GPU)

    async def generate(self, rgb: np.ndarray, alpha: np.ndarray,
                       options: GenerateOptions) -> np.ndarray:
        """RGB at the output size: the painted scene with the subject placed back on top."""
        started = time.perf_counter()
        async with self._lock:
            out = await asyncio.to_thread(generate, rgb, alpha, self.inpainter, options)
        MODEL_INFERENCE_SECONDS.observe(time.perf_counter() - started, {
            "model": "generator", "pool": "generate",
            "resolution": resolution_bucket(out.shape[1], out.shape[0])})
        return out

    def describe(self) -> dict[str, Any]:
        return {"device": self.inpainter.device, "native_size": self.inpainter.native,
                "pipeline": type(self.inpainter.pipe).__name__}
