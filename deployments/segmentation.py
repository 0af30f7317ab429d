"""One Serve deployment per segmentation model: a thin wrapper around `OnnxSegmenter`.

The builder applies `serve.deployment(SegmentationModel, name=<model id>, **pool options)`; the
class itself is plain and can be constructed in a test without Ray. Calls carry numpy arrays:
an RGB uint8 image in, a uint8 alpha mask of the same size out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from pipelines.catalog import ModelSpec
from pipelines.segmenter import OnnxSegmenter


class SegmentationModel:
    def __init__(
        self,
        spec: dict[str, Any],
        weights_path: str,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        self.spec = ModelSpec.model_validate(spec)
        self.segmenter = OnnxSegmenter(
            self.spec,
            weights_path,
            providers=providers or ["CPUExecutionProvider"],
            intra_op_threads=intra_op_threads,
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live tuning from the Serve config's `user_config` (batch size and wait)."""
        batch = user_config.get("batch") or {}
        if "max_batch_size" in batch:
            self.predict.set_max_batch_size(int(batch["max_batch_size"]))
        if "batch_wait_timeout_s" in batch:
            self.predict.set_batch_wait_timeout_s(float(batch["batch_wait_timeout_s"]))

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Alpha mask (uint8 H x W) for each RGB image (uint8 H x W x 3); batched by Serve."""
        # Inference releases the GIL; a worker thread keeps the replica's event loop free to
        # accept the next batch meanwhile.
        return await asyncio.to_thread(self.segmenter.predict_batch, images)

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.spec.id,
            "tier": self.spec.tier.value,
            "providers": self.segmenter.providers,
            "dynamic_batch": self.segmenter.dynamic_batch,
        }
