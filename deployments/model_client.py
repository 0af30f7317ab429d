"""How the ingress and the job worker call the model deployments: one client for both.

Each call sends the image at the model's input size and enlarges the mask it gets back
(`pipelines.segmenter.for_model` / `to_size`), maps Serve's refusals (a full queue, a lost
replica) to a 503 the caller can retry, and cancels the replica's request when the wait fails,
times out or is cancelled. A call is started once and then awaited (the ingress's event loop,
`Pending.get`) or waited for (a worker thread, `Pending.wait`).

`model=auto` runs here too, the same way for both callers, in two stages when a detector is
served: the detector and the person models first; the salient models (the costly pro model)
only when the detector does not see a person (score < `PERSON_SCORE`) or no person model
answered. Where it sees one, `pipelines.auto.decide` keeps a person model's mask either way, so
the choice is the one running every candidate would give, for a fraction of the CPU. Then
`decide` on what they answered (a failed candidate leaves the choice to the others). The
logged selections' win rates are read at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from pipelines import detect, rvm
from pipelines.auto import PERSON_SCORE, AutoPolicy, Choice, ServedModel, decide, person_score
from pipelines.catalog import ModelSpec, Tier
from pipelines.detect import Detection
from pipelines.errors import ModelUnavailable
from pipelines.segmenter import for_model, to_size
from serve_app.core.admission import Admission
from serve_app.core.errors import ServiceUnavailable

log = logging.getLogger("ray.serve.bgremove")
WinRates = Mapping[str, Mapping[str, tuple[int, int]]]


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
class Pending:
    """One call in flight and what to do with its answer (`finish`, e.g. enlarge the mask)."""

    response: DeploymentResponse
    what: str
    finish: Callable[[Any], Any] = lambda out: out
    # told once how the call ended: the replica's answer, or None when it failed
    settle: Callable[[Any], None] | None = None

    async def get(self) -> Any:
        try:
            with calling(self.what):
                out = await self.response
        except BaseException:
            self.response.cancel()  # a timeout or a client gone: stop the replica's work too
            self._settled(None)
            raise
        self._settled(out)
        return await asyncio.to_thread(self.finish, out)

    def wait(self, timeout_s: float) -> Any:
        try:
            with calling(self.what):
                out = self.response.result(timeout_s=max(0.0, timeout_s))
        except BaseException:
            self.response.cancel()
            self._settled(None)
            raise
        self._settled(out)
        return self.finish(out)

    def _settled(self, out: Any) -> None:
        settle, self.settle = self.settle, None
        if settle is not None:
            settle(out)


@dataclass
class ModelClient:
    """The served models' handles and catalog entries, the detector's handle (None when it is
    not served) and what `auto` chooses from."""

    handles: dict[str, DeploymentHandle]
    specs: dict[str, ModelSpec]
    detector: DeploymentHandle | None = None
    auto_models: list[ServedModel] = field(default_factory=list)
    auto_compare: bool = True
    win_rates: Callable[[], WinRates] | None = None  # category -> model -> (wins, offered)
    meter: Admission | None = None  # told each call's replica time (the ingress's admission)
    _rates: tuple[float, WinRates] = field(init=False, default=(0.0, {}))

    # ---- one model ---------------------------------------------------------------------------
    def prepare(self, model_id: str, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        """What to send `model_id` for `rgb` (CPU work: run it off the event loop)."""
        if model_id not in self.handles:
            raise ModelUnavailable(f"Model '{model_id}' is not served by this deployment.")
        spec = self.specs.get(model_id)
        return for_model(rgb, spec) if spec is not None else (rgb, False)

    def send(self, model_id: str, prepared: tuple[np.ndarray, bool],
             size: tuple[int, int]) -> Pending:
        """Start `model_id` on a `prepare`d image; the answer is (full-size mask, seconds)."""
        sent, native = prepared
        spec = self.specs.get(model_id)

        def finish(out: tuple[np.ndarray, float]) -> tuple[np.ndarray, float]:
            mask, seconds = out
            if native and spec is not None:
                mask = to_size(mask, spec, size)
            return mask, seconds
        settle = None
        if self.meter is not None:
            meter = self.meter

            def settle(out: tuple[np.ndarray, float] | None) -> None:
                if out is not None:
                    meter.observe(model_id, out[1])
        return Pending(self.handles[model_id].segment.remote(sent, native),
                       f"Model '{model_id}'", finish, settle)

    def segment(self, model_id: str, rgb: np.ndarray) -> Pending:
        return self.send(model_id, self.prepare(model_id, rgb), (rgb.shape[1], rgb.shape[0]))

    def sequence(self, model_id: str, frames: list[np.ndarray], warmup: int) -> Pending:
        """Start a recurrent model on consecutive frames (`pipelines.rvm`): they are sent at
        its working size; the answer is their masks after the warm-up, at the frames' size."""
        if model_id not in self.handles:
            raise ModelUnavailable(f"Model '{model_id}' is not served by this deployment.")
        size = (frames[0].shape[1], frames[0].shape[0]) if frames else (0, 0)
        sent = [rvm.to_work(f) for f in frames]

        def finish(masks: list[np.ndarray]) -> list[np.ndarray]:
            return [m if (m.shape[1], m.shape[0]) == size
                    else cv2.resize(m, size, interpolation=cv2.INTER_LINEAR) for m in masks]
        return Pending(self.handles[model_id].segment_sequence.remote(sent, warmup),
                       f"Model '{model_id}'", finish)

    def send_detect(self, prepared: np.ndarray, size: tuple[int, int]) -> Pending | None:
        """Start the detector on `detect.prepare(rgb)`; None when no detector is served."""
        if self.detector is None:
            return None
        return Pending(self.detector.detect.remote(prepared, *size), "The subject detector")

    # ---- auto ---------------------------------------------------------------------------------
    def policy(self) -> AutoPolicy:
        """auto's policy with the logged selections' win rates (read at most once a minute;
        without them while the database cannot answer)."""
        at, rates = self._rates
        if self.win_rates is not None and time.monotonic() - at > 60:
            try:
                rates = self.win_rates()
            except Exception:  # noqa: BLE001 - auto still chooses without them (outage logged)
                log.warning("model=auto: selections could not be read; choosing without them")
            self._rates = (time.monotonic(), rates)
        return AutoPolicy(tuple(self.auto_models), rates, compare=self.auto_compare)

    def cached_policy(self) -> AutoPolicy:
        """auto's policy with the win rates last read (no database read: for the event loop)."""
        return AutoPolicy(tuple(self.auto_models), self._rates[1], compare=self.auto_compare)

    def _prepare_all(self, rgb: np.ndarray, models: tuple[str, ...]
                     ) -> tuple[dict[str, tuple[np.ndarray, bool]], np.ndarray | None]:
        inputs = {m: self.prepare(m, rgb) for m in models}
        return inputs, (detect.prepare(rgb).astype(np.uint8) if self.detector is not None
                        else None)

    def _start(self, rgb: np.ndarray, inputs: dict[str, tuple[np.ndarray, bool]],
               det_input: np.ndarray | None) -> tuple[dict[str, Pending], Pending | None]:
        size = (rgb.shape[1], rgb.shape[0])
        calls = {m: self.send(m, x, size) for m, x in inputs.items()}
        return calls, (self.send_detect(det_input, size) if det_input is not None else None)

    @staticmethod
    def _outcomes(calls: dict[str, Pending], results: list[Any]
                  ) -> tuple[dict[str, np.ndarray | BaseException], list[Detection] | None]:
        """Each candidate's mask or error, and the detections (None when the detector failed
        or is not served: `decide` then works without them)."""
        outcomes: dict[str, np.ndarray | BaseException] = {}
        for model_id, result in zip(calls, results):
            if isinstance(result, BaseException):
                log.warning("model=auto: candidate %s failed (%s)", model_id, result)
                outcomes[model_id] = result
            else:
                outcomes[model_id] = result[0]
        detections = None
        if len(results) > len(calls):
            found = results[-1]
            if isinstance(found, BaseException):
                log.warning("model=auto: the subject detector failed (%s)", found)
            else:
                detections = found
        return outcomes, detections

    def _stages(self, policy: AutoPolicy, models: tuple[str, ...] | None
                ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(the candidates, what runs beside the detector, what runs only if it sees no
        person): with a detector and the policy's own candidates, the person models and the
        person category's most picked model first and the rest after; else all at once."""
        candidates = models or policy.candidates()
        if self.detector is None or models is not None:
            return candidates, candidates, ()
        winner = policy.winner("person")
        first = {*policy.person_models, *([winner] if winner else [])}
        return (candidates, tuple(m for m in candidates if m in first),
                tuple(m for m in candidates if m not in first))

    def _outcomes_of(self, candidates: tuple[str, ...], calls: dict[str, Pending],
                     results: dict[str, Any], det: Pending | None, found: Any
                     ) -> tuple[dict[str, np.ndarray | BaseException], list[Detection] | None]:
        """`_outcomes` of the candidates that ran, in the candidates' order."""
        ordered = {m: calls[m] for m in candidates if m in calls}
        return self._outcomes(ordered, [results[m] for m in ordered]
                              + ([found] if det is not None else []))

    @staticmethod
    def _sees_person(found: Any) -> bool:
        """The detector answered (not an error) and saw a person it is sure of."""
        return (found is not None and not isinstance(found, BaseException)
                and person_score(found) >= PERSON_SCORE)

    @classmethod
    def _settled_person(cls, found: Any, first: dict[str, Any]) -> bool:
        """The salient models can be skipped: a person detected and a person model answered."""
        return cls._sees_person(found) and any(not isinstance(r, BaseException)
                                               for r in first.values())

    async def auto(self, rgb: np.ndarray, models: tuple[str, ...] | None = None) -> Choice:
        """auto's choice for a still (the ingress's way: awaited)."""
        policy = await asyncio.to_thread(self.policy)
        candidates, first, rest = self._stages(policy, models)
        size = (rgb.shape[1], rgb.shape[0])
        inputs, det_input = await asyncio.to_thread(self._prepare_all, rgb, first)
        calls, det = self._start(rgb, inputs, det_input)
        try:
            results: dict[str, Any] = {}
            found: Any = None
            if det is not None:
                found = (await asyncio.gather(det.get(), return_exceptions=True))[0]
            if rest and self._sees_person(found):
                answers = await asyncio.gather(*(c.get() for c in calls.values()),
                                               return_exceptions=True)
                results = dict(zip(calls, answers))
                if self._settled_person(found, results):
                    rest = ()
            if rest:
                more = await asyncio.to_thread(lambda: {m: self.prepare(m, rgb) for m in rest})
                calls |= {m: self.send(m, x, size) for m, x in more.items()}
            waiting = [m for m in calls if m not in results]
            answers = await asyncio.gather(*(calls[m].get() for m in waiting),
                                           return_exceptions=True)
            results |= dict(zip(waiting, answers))
        except BaseException:
            for call in calls.values():  # cancelled or failed midway: no replica keeps working
                call.response.cancel()
            raise
        outcomes, detections = self._outcomes_of(candidates, calls, results, det, found)
        return await asyncio.to_thread(decide, policy, outcomes, detections, rgb)

    def auto_sync(self, rgb: np.ndarray, timeout_s: float,
                  models: tuple[str, ...] | None = None) -> Choice:
        """auto's choice for a still (a worker thread's way: one `timeout_s` for them all)."""
        policy = self.policy()
        deadline = time.monotonic() + timeout_s
        candidates, first, rest = self._stages(policy, models)
        calls, det = self._start(rgb, *self._prepare_all(rgb, first))

        def wait(call: Pending) -> Any:
            try:
                return call.wait(deadline - time.monotonic())
            except Exception as exc:  # noqa: BLE001 - the other candidates may still answer
                return exc
        found = wait(det) if det is not None else None
        results: dict[str, Any] = {}
        if rest and self._sees_person(found):
            results = {m: wait(c) for m, c in calls.items()}
            if self._settled_person(found, results):
                rest = ()
        for m in rest:
            calls[m] = self.segment(m, rgb)
        results |= {m: wait(c) for m, c in calls.items() if m not in results}
        outcomes, detections = self._outcomes_of(candidates, calls, results, det, found)
        return decide(policy, outcomes, detections, rgb)

    def look(self, rgb: np.ndarray, timeout_s: float) -> tuple[bool, str]:
        """Whether a video frame shows a person (`pipelines.auto.is_person`), from the detector,
        the person models and the light model (no pro model per sampled frame)."""
        policy = self.policy()
        light = [m.id for m in policy.models if m.tier is Tier.light][:1]
        choice = self.auto_sync(rgb, timeout_s, (*light, *policy.person_models))
        return choice.subject == "person", choice.why
