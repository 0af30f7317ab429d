"""The click/box prompt model as a Serve deployment: a thin wrapper around `PromptSegmenter`.

One replica keeps the last `cache_size` image embeddings (keyed by the image's content hash),
so a person refining a cut-out with more clicks pays the encoder once per image. With several
replicas, Serve's power-of-two routing does not pin an image to a replica: a second prompt may
miss the cache on another replica (it is then encoded again, never wrong).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from ray import serve

from deployments.metrics import MODEL_INFERENCE_SECONDS, resolution_bucket
from pipelines.sam import Prompt, PromptSegmenter
from serve_app.core.model_bucket import local_weights
from serve_app.core.settings import get_settings


class PromptModel:
    def __init__(self, encoder_path: str, decoder_path: str, providers: list[str] | None = None,
                 intra_op_threads: int = 0, cache_size: int = 32) -> None:
        encoder_path = local_weights(encoder_path, get_settings())  # with a models bucket
        decoder_path = local_weights(decoder_path, get_settings())
        self.segmenter = PromptSegmenter(
            encoder_path, decoder_path, providers=tuple(providers or ["CPUExecutionProvider"]),
            intra_op_threads=intra_op_threads, cache_size=cache_size)
        self._lock = asyncio.Lock()  # one encode at a time: it already uses every thread

    async def segment(self, image: np.ndarray, prompt: Prompt, base: np.ndarray | None = None,
                      mode: str = "replace") -> np.ndarray:
        """uint8 mask at the image's size (see `PromptSegmenter.segment`)."""
        started = time.perf_counter()
        async with self._lock:
            mask = await asyncio.to_thread(self.segmenter.segment, image, prompt, base, mode)
        MODEL_INFERENCE_SECONDS.observe(time.perf_counter() - started, {
            "model": "mobilesam", "pool": "prompt",
            "resolution": resolution_bucket(image.shape[1], image.shape[0])})
        return mask

    def describe(self) -> dict[str, Any]:
        ctx = serve.get_replica_context()
        return {"model_id": "mobilesam", "replica_id": ctx.replica_id.unique_id,
                "providers": self.segmenter.encoder.get_providers(),
                "embedding_cache": self.segmenter.cache_stats()}
