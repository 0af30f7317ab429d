"""The ingress's way to the model deployments: which handle serves a model id, and the one
place where Serve's overload and lost-replica errors become a 503 the client can retry.

Every call from a route to a model, the prompt model or the generator goes through `calling`,
so a full queue (`max_queued_requests`) or a replica lost with its node reads the same
everywhere: `ServiceUnavailable` with `retry_after_s`. `resolve` runs the model a request
asks for, or for `model=auto` the candidates `pipelines.auto` names for the image at hand, and
returns the model that ran with its mask.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from pipelines.auto import AUTO, AutoPolicy, ServedModel, categorize, pick
from pipelines.catalog import ModelSpec, Price
from pipelines.errors import ModelUnavailable, UnknownModel
from pipelines.images import DecodedImage
from pipelines.sam import Prompt, prompt_model_missing
from pipelines.segmenter import for_model, to_size
from serve_app.core.errors import ServiceUnavailable
from serve_app.schemas import MatteOptions

log = logging.getLogger("ray.serve.bgremove")


@contextmanager
def calling(what: str, retry_after_s: int = 1) -> Iterator[None]:
    """Map Serve's refusals of a call to `what` ("Model 'u2netp'", "The generator") to 503s."""
    try:
        yield
    except BackPressureError:  # the deployment's queue is full: shed, do not pile up
        raise ServiceUnavailable(f"{what} is busy; retry shortly.",
                                 {"retry_after_s": retry_after_s}) from None
    except (RayActorError, ActorUnavailableError):  # its replica's node went away
        raise ServiceUnavailable(f"{what} replica was lost; retry shortly.",
                                 {"retry_after_s": retry_after_s + 1}) from None


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
    auto_compare: bool = True  # objects: pro and light side by side, the more confident kept
    # category -> model id -> (wins, offered), from the logged selections
    win_rates: Callable[[], Mapping[str, Mapping[str, tuple[int, int]]]] | None = None
    prices: dict[str, Price] = field(init=False)
    specs: dict[str, ModelSpec] = field(init=False)
    _rates: tuple[float, Mapping[str, Mapping[str, tuple[int, int]]]] = field(
        init=False, default=(0.0, {}))

    def __post_init__(self) -> None:
        self.prices = {m: Price.model_validate(e.get("price") or {})
                       for m, e in self.catalog.items()}
        self.specs = {m: ModelSpec.model_validate(self.catalog[m]) for m in self.handles}

    def check(self, requested: str | None) -> str:
        """The model id a request names (the default when none), checked before any work:
        `auto` stays `auto` (resolved once the image is decoded)."""
        model_id = requested or self.default_model
        if model_id != AUTO:
            self.handle(model_id)
        elif not self.auto_models:
            raise ModelUnavailable("model 'auto' has no served model to choose from.")
        return model_id

    async def resolve(self, requested: str | None, image: DecodedImage) -> tuple[str, np.ndarray]:
        """The model that ran on `image` and its full-size mask: the one asked for, or auto's
        choice. For an object auto runs its candidates (pro and light) side by side and keeps
        the more confident mask; when one of them fails the other's answer stands."""
        model_id = self.check(requested)
        if model_id != AUTO:
            return model_id, (await self.segment(model_id, image.rgb))[0]
        policy = AutoPolicy(tuple(self.auto_models), await self._win_rates(),
                            compare=self.auto_compare)
        cue: dict[str, np.ndarray] = {}  # the person model's mask, run for the face cue
        if policy.person_model is not None:
            cue[policy.person_model] = (await self.segment(policy.person_model, image.rgb))[0]
        category = await asyncio.to_thread(categorize, image.rgb, next(iter(cue.values()), None))
        candidates = policy.candidates(category, *image.size)

        async def outcome(model_id: str) -> np.ndarray:
            return cue[model_id] if model_id in cue else (
                await self.segment(model_id, image.rgb))[0]

        results = await asyncio.gather(*map(outcome, candidates), return_exceptions=True)
        outcomes = dict(zip(candidates, results, strict=True))
        for model_id, result in outcomes.items():
            if isinstance(result, BaseException):
                log.warning("model=auto: candidate %s failed (%s)", model_id, result)
        return pick(outcomes)

    async def _win_rates(self) -> Mapping[str, Mapping[str, tuple[int, int]]]:
        """The logged selections' win rates, read at most once a minute."""
        at, rates = self._rates
        if self.win_rates is not None and time.monotonic() - at > 60:
            try:
                rates = await asyncio.to_thread(self.win_rates)
            except Exception:  # noqa: BLE001 - auto still chooses without them (outage logged)
                log.warning("model=auto: selections could not be read; choosing without them")
            self._rates = (time.monotonic(), rates)
        return rates

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

    async def mask_for(self, image: DecodedImage, options: MatteOptions) -> tuple[str, np.ndarray]:
        """The model that ran (`auto` resolved) and its mask of `image`, corrected by the
        options' clicks and box if any."""
        model_id, mask = await self.resolve(options.model, image)
        prompt = options.prompt()
        if prompt:
            mask = await self.prompted_mask(image.rgb, prompt, mask, options.prompt_mode)
        return model_id, mask

    async def segment(self, model_id: str, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """`model_id`'s mask of `rgb` at full size and the inference seconds it is charged.
        The replica gets the image at the model's input size and answers at its output size
        (`pipelines.segmenter.for_model`); a cancelled or failed call cancels its request."""
        handle = self.handle(model_id)
        spec = self.specs[model_id]
        sent, native = await asyncio.to_thread(for_model, rgb, spec)
        response = handle.segment.remote(sent, native)
        try:
            with calling(f"Model '{model_id}'"):
                mask, seconds = await response
        except BaseException:
            response.cancel()  # a timeout or a client gone: stop the replica's work too
            raise
        if native:
            mask = await asyncio.to_thread(to_size, mask, spec, (rgb.shape[1], rgb.shape[0]))
        return mask, seconds

    async def prompted_mask(self, rgb: np.ndarray, prompt: Prompt, base: np.ndarray | None,
                            mode: str) -> np.ndarray:
        """The mask corrected (or replaced) by clicks and a box, from the prompt model."""
        if self.prompter is None:
            raise prompt_model_missing()
        prompt.check(rgb.shape[1], rgb.shape[0])
        with calling("The prompt model"):
            return await self.prompter.segment.remote(rgb, prompt, base, mode)
