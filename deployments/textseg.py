"""The open-vocabulary backend of `text_prompt` as a Serve deployment (a thin wrapper)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from pipelines.textseg import ClipSegBackend, select


class TextSegmentation:
    def __init__(self, model_dir: str, device: str = "cpu", threads: int = 0,
                 threshold: float = 0.4) -> None:
        self.backend = ClipSegBackend(model_dir, device=device, threads=threads)
        self.threshold = threshold
        self._lock = asyncio.Lock()  # torch already uses every thread for one call

    async def select(self, image: np.ndarray, terms: list[str],
                     base: np.ndarray) -> tuple[np.ndarray, dict[str, list[str]]]:
        """The base mask restricted to what the terms name, and which terms matched."""
        async with self._lock:
            maps = await asyncio.to_thread(self.backend.heatmaps, image, terms)
        return select(maps, terms, base, threshold=self.threshold)

    def describe(self) -> dict[str, Any]:
        return {"backend": "clipseg", "device": self.backend.device, "threshold": self.threshold}
