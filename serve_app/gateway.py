"""The ingress's way to the model deployments: which handle serves a model id, why a model is
missing, and the optional prompt and generator deployments. Model calls and `model=auto` go
through `deployments.model_client.ModelClient`, which the job worker uses too; `calling` maps
Serve's overload and lost-replica errors to a 503 the client can retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from ray.serve.handle import DeploymentHandle

from deployments.model_client import ModelClient, calling
from pipelines.auto import AUTO, ServedModel
from pipelines.catalog import ModelSpec, Price
from pipelines.detect import Kind
from pipelines.errors import ModelUnavailable, UnknownModel
from pipelines.images import DecodedImage
from pipelines.sam import Prompt, prompt_model_missing
from serve_app.core.admission import Admission
from serve_app.schemas import MatteOptions

log = logging.getLogger("ray.serve.bgremove")
__all__ = ["ModelGateway", "Resolved", "calling"]


class Resolved(NamedTuple):
    """The model that ran on an image and its mask; for `model=auto` also what the subject is
    and why that model was kept."""

    model_id: str
    mask: np.ndarray
    subject: Kind | None = None
    why: str | None = None


@dataclass
class ModelGateway:
    """The served models (`handles`), the catalog entries of every model, why the missing ones
    are missing, and the optional prompt and generator deployments."""

    handles: dict[str, DeploymentHandle]
    catalog: dict[str, dict[str, Any]]
    missing: dict[str, str]  # configured, not installed: why
    default_model: str
    prompter: DeploymentHandle | None = None  # click/box prompts, when its weights are there
    generator: DeploymentHandle | None = None  # /image/generate/v1, when one is configured
    withheld: dict[str, str] = field(default_factory=dict)  # installed, licence not accepted
    auto_models: list[ServedModel] = field(default_factory=list)  # what `auto` chooses from
    auto_compare: bool = True  # stills: pro and light side by side, the more confident kept
    detector: DeploymentHandle | None = None  # the subject detector behind `auto`
    admission: Admission | None = None  # refuses a request that would wait too long
    prices: dict[str, Price] = field(init=False)
    specs: dict[str, ModelSpec] = field(init=False)
    client: ModelClient = field(init=False)

    def __post_init__(self) -> None:
        self.prices = {m: Price.model_validate(e.get("price") or {})
                       for m, e in self.catalog.items()}
        self.specs = {m: ModelSpec.model_validate(self.catalog[m]) for m in self.handles}
        self.client = ModelClient(self.handles, self.specs, self.detector, self.auto_models,
                                  self.auto_compare, meter=self.admission)

    @property
    def win_rates(self) -> Callable[[], Mapping[str, Mapping[str, tuple[int, int]]]] | None:
        return self.client.win_rates

    @win_rates.setter
    def win_rates(self, read: Callable[[], Mapping[str, Mapping[str, tuple[int, int]]]] | None
                  ) -> None:
        """Where auto reads the logged selections' win rates (the selections store)."""
        self.client.win_rates = read

    def check(self, requested: str | None) -> str:
        """The model id a request names (the default when none), checked before any work:
        `auto` stays `auto` (resolved once the image is decoded)."""
        model_id = requested or self.default_model
        if model_id != AUTO:
            self.handle(model_id)
        elif not self.auto_models:
            raise ModelUnavailable("model 'auto' has no served model to choose from.")
        return model_id

    def admitted(self, model_ids: str | list[str] | None) -> AbstractContextManager:
        """Around a synchronous request, before any decoding: 503 + Retry-After when the
        models it needs (`auto`: its candidates) have more than `max_queue_wait_s` of work
        queued; else the request counts on their queues until it is answered
        (`core.admission`)."""
        if self.admission is None:
            return nullcontext()
        ids = [model_ids or self.default_model] if not isinstance(model_ids, list) else model_ids
        if AUTO in ids:
            ids = [m for m in ids if m != AUTO] + list(self.client.cached_policy().candidates())
        return self.admission.admitted([m for m in ids if m in self.handles])

    async def resolve(self, requested: str | None, image: DecodedImage) -> Resolved:
        """The model that ran on `image` and its full-size mask; for `model=auto`, what the
        subject is and why (`deployments.model_client.ModelClient.auto`)."""
        model_id = self.check(requested)
        if model_id != AUTO:
            return Resolved(model_id, (await self.segment(model_id, image.rgb))[0])
        choice = await self.client.auto(image.rgb)
        return Resolved(choice.model_id, choice.mask, choice.subject, choice.why)

    def handle(self, model_id: str) -> DeploymentHandle:
        """The deployment serving `model_id`; UnknownModel (400) or ModelUnavailable (503)."""
        if model_id in self.handles:
            return self.handles[model_id]
        reason = self.missing.get(model_id) or self.withheld.get(model_id)
        if reason is not None:
            raise ModelUnavailable(f"Model '{model_id}' is not available: {reason}")
        if model_id in self.catalog:
            raise ModelUnavailable(f"Model '{model_id}' is not enabled in this deployment.")
        raise UnknownModel(
            f"Unknown model '{model_id}'. Available: {', '.join(sorted(self.handles)) or 'none'}."
        )

    async def mask_for(self, image: DecodedImage, options: MatteOptions) -> Resolved:
        """`resolve`, the mask corrected by the options' clicks and box if any."""
        found = await self.resolve(options.model, image)
        prompt = options.prompt()
        if prompt:
            return found._replace(mask=await self.prompted_mask(image.rgb, prompt, found.mask,
                                                                options.prompt_mode))
        return found

    async def segment(self, model_id: str, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """`model_id`'s mask of `rgb` at full size and the inference seconds it is charged."""
        self.handle(model_id)
        prepared = await asyncio.to_thread(self.client.prepare, model_id, rgb)
        mask, seconds = await self.client.send(model_id, prepared,
                                               (rgb.shape[1], rgb.shape[0])).get()
        return mask, seconds

    async def prompted_mask(self, rgb: np.ndarray, prompt: Prompt, base: np.ndarray | None,
                            mode: str) -> np.ndarray:
        """The mask corrected (or replaced) by clicks and a box, from the prompt model."""
        if self.prompter is None:
            raise prompt_model_missing()
        prompt.check(rgb.shape[1], rgb.shape[0])
        with calling("The prompt model"):
            return await self.prompter.segment.remote(rgb, prompt, base, mode)
