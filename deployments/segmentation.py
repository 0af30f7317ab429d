"""One Serve deployment per segmentation model: a thin wrapper around `OnnxSegmenter`.

The builder applies `serve.deployment(SegmentationModel, name=<model id>, **pool options)`; the
class itself is plain and can be constructed in a test without Ray. Calls carry numpy arrays:
an RGB uint8 image in, a uint8 alpha mask of the same size out (`predict`), or the mask and the
inference seconds attributed to the call (`segment`, which the shotgun uses to price each call).
With `native=True` the image is already at the model's input size and the mask comes back at
the model's output size (`pipelines.segmenter.for_model` / `to_size`: the caller resizes).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import ray
from ray import serve

from deployments.metrics import (
    MODEL_BATCH_SIZE,
    MODEL_IN_FLIGHT,
    MODEL_INFERENCE_SECONDS,
    resolution_bucket,
)
from pipelines.catalog import ModelSpec
from pipelines.errors import InvalidRequest
from pipelines.rvm import RecurrentMatter
from pipelines.segmenter import OnnxSegmenter
from serve_app.core.model_bucket import local_weights
from serve_app.core.settings import get_settings


class SegmentationModel:
    def __init__(
        self,
        spec: dict[str, Any],
        weights_path: str,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
        concurrent_inferences: int = 1,
        solo_intra_op_threads: int = 0,
        precision: str = "auto",
        cpu_memory_arena: bool = True,
        int8_path: str | None = None,
        input_size: int | None = None,
    ) -> None:
        self.spec = ModelSpec.model_validate(spec)
        settings = get_settings()
        weights_path = local_weights(weights_path, settings)  # with a models bucket: this
        if int8_path:                                         # node's copy, fetched if missing
            int8_path = local_weights(int8_path, settings)
        self.segmenter = OnnxSegmenter(
            self.spec,
            weights_path,
            providers=providers or ["CPUExecutionProvider"],
            intra_op_threads=intra_op_threads,
            solo_threads=solo_intra_op_threads,
            precision=precision,
            memory_arena=cpu_memory_arena,
            int8_path=int8_path,
            input_size=input_size,
        )
        # A session's first runs allocate its memory arena (u2netp: 463 vs 306 ms for the first
        # and second call here): pay that at start-up, not on a user's first request.
        blank = np.zeros((32, 32, 3), np.uint8)
        self.segmenter.predict_batch([blank])
        if solo_intra_op_threads:
            self.segmenter.predict_batch([blank], solo=True)
        # onnxruntime sessions are thread-safe: on CPU, N single-threaded runs side by side use
        # N cores with one copy of the weights and no thread synchronisation per layer.
        self._slots = asyncio.Semaphore(concurrent_inferences)
        self._settings = {"providers": self.segmenter.providers, "intra_op_threads": intra_op_threads,
                          "concurrent_inferences": concurrent_inferences,
                          "solo_intra_op_threads": solo_intra_op_threads,
                          "precision": self.segmenter.precision,
                          "cpu_memory_arena": cpu_memory_arena,
                          "input_size": input_size,
                          "model_input_hw": (self.segmenter.spec.preprocess.height,
                                             self.segmenter.spec.preprocess.width)}
        self._batching = False
        self._batch: dict[str, Any] = {}
        self._in_flight = 0
        self._images = 0  # served by this replica, and the largest batch it ran (describe())
        self._largest_batch = 0

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live tuning from the Serve config's `user_config` (batch size and wait)."""
        batch = user_config.get("batch") or {}
        size = int(batch.get("max_batch_size", 1))
        self._batching = size > 1
        self._batch = dict(batch)
        self._segment_batched.set_max_batch_size(size)
        self._segment_batched.set_batch_wait_timeout_s(float(batch.get("batch_wait_timeout_s", 0.0)))

    async def predict(self, image: np.ndarray, native: bool = False) -> np.ndarray:
        """Alpha mask (uint8 H x W) for an RGB image (uint8 H x W x 3)."""
        return (await self.segment(image, native))[0]

    async def segment(self, image: np.ndarray, native: bool = False) -> tuple[np.ndarray, float]:
        """The alpha mask and the inference seconds attributed to this call.

        With batching on (pool `batch.max_batch_size` > 1), concurrent calls are grouped by
        `@serve.batch` and share the batch's time evenly; otherwise each call runs as soon as an
        inference slot is free.
        """
        self._in_flight += 1
        MODEL_IN_FLIGHT.set(self._in_flight, {"model": self.spec.id})
        try:
            if self._batching:
                return await self._segment_batched(image, native)
            return (await self._infer([image], [native], solo=self._in_flight == 1))[0]
        finally:
            self._in_flight -= 1
            MODEL_IN_FLIGHT.set(self._in_flight, {"model": self.spec.id})

    async def segment_sequence(self, frames: list[np.ndarray], warmup: int = 0
                               ) -> list[np.ndarray]:
        """A recurrent model's masks of consecutive frames (`pipelines.rvm`): the state carried
        through them in order from zero, the first `warmup` frames' masks dropped."""
        if not self.spec.recurrent:
            raise InvalidRequest(f"model {self.spec.id!r} is not a recurrent video model")
        started = time.perf_counter()
        async with self._slots:
            masks = await asyncio.to_thread(RecurrentMatter(self.segmenter.session).run,
                                            frames, warmup)
        self._images += len(frames)
        MODEL_INFERENCE_SECONDS.observe((time.perf_counter() - started) / max(len(frames), 1), {
            "model": self.spec.id, "pool": self.spec.tier.value,
            "resolution": resolution_bucket(frames[0].shape[1], frames[0].shape[0])
            if frames else "none"})
        return masks

    def describe(self) -> dict[str, Any]:
        """What this replica runs with: model, pool, providers, threads, batching, resources."""
        ctx = serve.get_replica_context()
        return {
            "model_id": self.spec.id, "pool": self.spec.tier.value,
            "deployment": ctx.deployment, "replica_id": ctx.replica_id.unique_id,
            **self._settings, "batch": self._batch,
            "images": self._images, "largest_batch": self._largest_batch,
            "resources": ray.get_runtime_context().get_assigned_resources(),
        }

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _segment_batched(self, images: list[np.ndarray],
                               native: list[bool]) -> list[tuple[np.ndarray, float]]:
        return await self._infer(images, native)

    async def _infer(self, images: list[np.ndarray], native: list[bool],
                     solo: bool = False) -> list[tuple[np.ndarray, float]]:
        # Inference releases the GIL; a worker thread keeps the event loop free meanwhile.
        self._images += len(images)
        self._largest_batch = max(self._largest_batch, len(images))
        async with self._slots:
            started = time.perf_counter()
            masks = await asyncio.to_thread(self.segmenter.predict_batch, images, solo=solo,
                                            native=native)
            elapsed = time.perf_counter() - started
            share = elapsed / len(images)
        model, pool = self.spec.id, self.spec.tier.value
        MODEL_BATCH_SIZE.observe(len(images), {"model": model})
        for image in images:
            MODEL_INFERENCE_SECONDS.observe(elapsed, {
                "model": model, "pool": pool,
                "resolution": resolution_bucket(image.shape[1], image.shape[0])})
        return [(mask, share) for mask in masks]
