"""The job worker deployment: runs async jobs (HD images, /v1/jobs) from the durable store.

Requests never run jobs: the ingress writes a job row and pokes a worker (`wake`). Each replica
runs one polling thread that claims queued jobs (a lease in the database, renewed while the job
runs) and executes at most `job_concurrency` at once in a thread pool; model calls go to the
model deployments through their handles. If a replica dies, its leases expire and another
replica (or the restarted app) resumes the job; see `serve_app.core.jobs`. The same thread delivers
due webhooks (retried with backoff, every attempt recorded) and deletes expired outputs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import ray
from ray.serve.handle import DeploymentHandle

from deployments.metrics import CREDITS_CHARGED, JOBS
from deployments.model_client import ModelClient
from pipelines import video, webhooks
from pipelines.auto import AUTO, ServedModel, categorize_clip
from pipelines.catalog import ModelSpec
from pipelines.errors import (
    FetchError,
    InvalidRequest,
    ModelUnavailable,
    PayloadTooLarge,
    ServiceError,
)
from pipelines.fetch import fetch_url
from pipelines.images import decode_image
from pipelines.render import render_image_job, render_video
from pipelines.sam import prompt_model_missing
from pipelines.temporal import MaskSmoother
from serve_app.core.artifacts import artifact_store
from serve_app.core.db import now
from serve_app.core.errors import InsufficientCredits, ProcessingError
from serve_app.core.job_params import JobPrompt
from serve_app.core.jobs import COMPLETED, Job, JobStore
from serve_app.core.keys import Charge, KeyStore
from serve_app.core.settings import apply_log_level, get_settings
from serve_app.core.store import Store

log = logging.getLogger("ray.serve.bgremove")
_MAINTENANCE_EVERY_S = 30.0
_JOBS_GAUGE_EVERY_S = 5.0  # how often the jobs-by-state gauge is refreshed
# Failures caused by the client's input (its file, URL or parameters): 4xx on the result
# routes, with the reason. Anything else that fails a job is ours: 5xx.
class LeaseLost(Exception):
    """This worker's lease on a job expired and another worker took the job over."""


CLIENT_FAULTS = (InvalidRequest, PayloadTooLarge, ProcessingError, InsufficientCredits)
VIDEO_MEDIA_TYPES = {"webm": "video/webm", "mp4": "video/mp4", "mov": "video/quicktime"}


class JobWorker:
    def __init__(self, models: dict[str, DeploymentHandle], model_timeout_s: float = 600.0,
                 prompter: DeploymentHandle | None = None,
                 text_segmenter: DeploymentHandle | None = None,
                 detector: DeploymentHandle | None = None,
                 auto_models: list[ServedModel] | None = None,
                 auto_compare: bool = True,
                 specs: dict[str, dict[str, Any]] | None = None) -> None:
        self.models = models
        # the served models' catalog entries: what each model reads (`_segment`)
        self.specs = {m: ModelSpec.model_validate(e) for m, e in (specs or {}).items()}
        self.prompter = prompter  # click/box prompts of /v1/jobs (None: not installed)
        self.text_segmenter = text_segmenter  # text_prompt terms (None: not configured)
        self.model_timeout_s = model_timeout_s
        self.settings = get_settings()
        apply_log_level(self.settings)
        self.store = JobStore.from_settings(self.settings)
        self.keys = KeyStore.from_settings(self.settings)
        self._leases_lost: set[str] = set()  # job ids whose lease this worker lost
        self.selections = Store.from_settings(self.settings)  # shotgun picks, for auto
        # model calls and `model=auto`, the same way as the ingress makes them
        self.client = ModelClient(models, self.specs, detector, auto_models or [], auto_compare,
                                  self.selections.rates_by_category)
        self.artifacts = artifact_store(self.settings)
        self.worker_id = f"worker-{uuid.uuid4().hex[:10]}"
        s = self.settings
        self.fetch_policy = s.fetch_policy(s.hd_max_upload_bytes)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._slots = threading.Semaphore(s.job_concurrency)
        self._pool = ThreadPoolExecutor(s.job_concurrency, thread_name_prefix="job")
        self._thread = threading.Thread(target=self._loop, name="job-worker", daemon=True)
        self._thread.start()
        # Webhooks have their own thread and event loop: a slow receiver never delays claiming.
        self._hooks = threading.Thread(target=self._webhook_loop, name="job-webhooks", daemon=True)
        self._hooks.start()
        log.info("job worker %s: up to %d jobs at once", self.worker_id, s.job_concurrency)

    # ---- Serve hooks and handle methods -----------------------------------------------------
    def wake(self) -> None:
        """Look for work now (called by the ingress after it queued a job)."""
        self._wake.set()

    def check_health(self) -> None:
        if not (self._thread.is_alive() and self._hooks.is_alive()):
            raise RuntimeError("job worker thread died")

    def __del__(self) -> None:
        self._stop.set()
        self._wake.set()

    # ---- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        last_maintenance = last_gauge = 0.0
        while not self._stop.is_set():
            try:
                while self._slots.acquire(blocking=False):
                    try:
                        job = self.store.claim(self.worker_id, self.settings.job_lease_s)
                    except BaseException:
                        self._slots.release()
                        raise
                    if job is None:
                        self._slots.release()
                        break
                    self._pool.submit(self._run, job)
                if time.monotonic() - last_gauge > _JOBS_GAUGE_EVERY_S:
                    last_gauge = time.monotonic()
                    for (state, kind), n in self.store.count_by_state().items():
                        JOBS.set(n, {"state": state, "kind": kind})
                if time.monotonic() - last_maintenance > _MAINTENANCE_EVERY_S:
                    last_maintenance = time.monotonic()
                    self._maintenance()
            except Exception:  # noqa: BLE001 - the loop must survive a database hiccup
                log.exception("job worker loop")
            self._wake.wait(self.settings.job_poll_s)
            self._wake.clear()

    def _run(self, job: Job) -> None:
        lease = self.settings.job_lease_s
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(lease / 3):
                try:
                    if not self.store.heartbeat(job.job_id, self.worker_id, lease):
                        log.warning("job %s: lease lost; stopping it here", job.job_id)
                        self._leases_lost.add(job.job_id)  # the work stops at its next step
                        return
                except Exception:  # noqa: BLE001 - a database hiccup: try again next beat
                    log.exception("job %s: heartbeat", job.job_id)

        started = time.monotonic()
        fields = {"job_id": job.job_id, "api": job.api, "kind": job.kind, "key_id": job.owner,
                  "model": job.params.model_id, "attempt": job.attempts}
        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        try:
            key, media_type, units, result = self._process(job)
            price = (self.settings.price_video_second if job.kind == "video"
                     else self.settings.price_image)
            charge = Charge(f"{job.api}:{job.kind}", units, round(units * price, 4))
            if not self.store.complete(job.job_id, self.worker_id, key, media_type,
                                       self.settings.job_output_ttl_s, charge, result):
                self.artifacts.delete(key)  # taken over meanwhile: only our own attempt's file
                log.info("job %s: finished after its lease was lost; result dropped",
                         job.job_id, extra={**fields, "state": "superseded"})
                return
            if job.owner is not None and charge.credits > 0:
                CREDITS_CHARGED.inc(charge.credits, {"operation": charge.operation})
            log.info("job %s completed (%s)", job.job_id, media_type, extra={
                **fields, "state": "completed", "credits": charge.credits,
                "duration_ms": round((time.monotonic() - started) * 1e3, 1)})
        except LeaseLost:  # another worker holds the job now: it is theirs to finish
            log.info("job %s: stopped after its lease was lost", job.job_id,
                     extra={**fields, "state": "superseded"})
        except ServiceError as exc:
            self.store.fail(job.job_id, exc.message, worker_id=self.worker_id,
                            kind="input" if isinstance(exc, CLIENT_FAULTS) else "internal")
            log.info("job %s failed: %s", job.job_id, exc.message, extra={
                **fields, "state": "failed",
                "duration_ms": round((time.monotonic() - started) * 1e3, 1)})
        except Exception as exc:  # noqa: BLE001 - recorded as the job's failure reason
            log.exception("job %s failed", job.job_id, extra={**fields, "state": "failed"})
            self.store.fail(job.job_id, f"Processing failed ({type(exc).__name__})",
                            worker_id=self.worker_id)
        finally:
            done.set()
            self._leases_lost.discard(job.job_id)
            if job.input_key and job.input_key.startswith("inputs/"):
                try:  # a job's private inputs (HD/video submit) are not needed once it ended
                    if self.store.get(job.job_id).state in ("completed", "failed"):
                        self.artifacts.delete_prefix(f"inputs/{job.job_id}/")
                except Exception:  # noqa: BLE001 - retention sweeps it later
                    log.exception("job %s: input cleanup", job.job_id)
            self._slots.release()
            self._wake.set()

    def _model(self, model_id: str) -> DeploymentHandle:
        handle = self.models.get(model_id)
        if handle is None:
            raise ServiceError(f"Model '{model_id}' is not served by this deployment.")
        return handle

    def _segment(self, model_id: str, rgb: np.ndarray,
                 deadline: float | None = None) -> Callable[[], np.ndarray]:
        """Start `model_id`'s mask of `rgb`; returns the wait for the full-size mask (until
        `deadline`, a time.monotonic(), else for the model timeout). A wait that fails or
        times out cancels the replica's request (`deployments.model_client`)."""
        self._model(model_id)
        call = self.client.segment(model_id, rgb)

        def wait() -> np.ndarray:
            timeout = (self.model_timeout_s if deadline is None
                       else deadline - time.monotonic())
            return call.wait(timeout)[0]
        wait.cancel = call.response.cancel  # type: ignore[attr-defined]  # job failed: drop it
        return wait

    def _auto_video(self, path: str, max_duration_s: float | None) -> tuple[str, str]:
        """One model for the whole clip, from 5 frames spread over what will be processed:
        the recurrent person model (RVM) or a person model for a person, else a light model."""
        frames = video.sample_frames(path, 5, max_duration_s)
        category, _ = categorize_clip(
            frames, lambda rgb: self.client.look(rgb, self.model_timeout_s))
        height, width = frames[0].shape[:2] if frames else (1, 1)
        return self.client.policy().choose(category, width, height, video=True)[0], category

    def _process(self, job: Job) -> tuple[str, str, float, dict | None]:
        """Run the job: its output's key and media type, the units it is charged for (1 image,
        or the seconds of video processed), and what to report with it (text_prompt terms)."""
        if job.kind == "video":
            return self._process_video(job)
        if job.kind != "image":
            raise ServiceError(f"No processor for {job.kind} jobs in this deployment.")
        if job.input_key is not None:
            with self.artifacts.open(job.input_key) as f:
                data = f.read()
        else:
            data = self._fetch(job.input_url, self.fetch_policy.max_bytes)
        params = job.params
        report: dict = {}

        def segment(rgb: np.ndarray) -> np.ndarray:
            if params.model_id == AUTO:
                choice = self.client.auto_sync(rgb, self.model_timeout_s)
                report["model_id"], report["subject"], mask = (choice.model_id, choice.subject,
                                                               choice.mask)
            else:
                mask = self._segment(params.model_id, rgb)()
            ref = ray.put(rgb) if params.text_prompt or params.prompt is not None else None
            if params.text_prompt:
                mask, report["text_prompt"] = self._text_select(ref, params.text_prompt, mask)
            if params.prompt is not None:
                mask = self._prompted(ref, params.prompt, mask)
            return mask

        fmt = params.output_format
        output, media_type = render_image_job(
            data, segment, max_pixels=self.settings.hd_max_pixels, output_format=fmt,
            background=params.background, composition=params.composition,
            options=params.options,
        )
        # One key per attempt: a worker that lost its lease never touches the new owner's file.
        key = f"jobs/{job.job_id}/attempt-{job.attempts}/output.{fmt}"
        self.artifacts.put_bytes(key, output)
        return key, media_type, 1.0, report or None

    def _prompted(self, ref, prompt: JobPrompt, mask: np.ndarray) -> np.ndarray:
        if self.prompter is None:
            raise prompt_model_missing()
        return self.prompter.segment.remote(ref, prompt.prompt(), mask, prompt.mode).result(
            timeout_s=self.model_timeout_s)

    def _text_select(self, ref, terms: list[str], mask: np.ndarray) -> tuple[np.ndarray, dict]:
        if self.text_segmenter is None:
            raise ModelUnavailable("text_prompt needs the open-vocabulary segmentation backend, "
                                   "which is not being served by this deployment.")
        selected, matches = self.text_segmenter.select.remote(ref, terms, mask).result(
            timeout_s=self.model_timeout_s)
        if not matches["matched"]:
            raise InvalidRequest(f"None of the text_prompt terms was found in the image: "
                                 f"{', '.join(terms)}.")
        return selected, matches

    def _fetch(self, url: str, max_bytes: int, sink: BinaryIO | None = None) -> bytes:
        """The URL's body (or, with `sink`, written there as it arrives)."""
        policy = dataclasses.replace(self.fetch_policy, max_bytes=max_bytes)
        try:
            return _run_async(fetch_url(url, policy, sink=sink))
        except FetchError as exc:  # the reason, not what internal names resolve to
            reason = (exc.details or {}).get("reason", "failed")
            raise FetchError(f"The input URL could not be fetched ({reason}).") from None

    def _process_video(self, job: Job) -> tuple[str, str, float, dict | None]:
        """Stream the video through the model deployment (frames `video_window` at a time, so
        concurrent jobs' frames share the model's batches and every replica can take frames)."""
        params, settings = job.params, self.settings
        fmt = params.output_format
        report: dict = {}

        def submit(rgb: np.ndarray) -> Callable[[], np.ndarray]:
            return self._segment(model_id, rgb)

        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            if job.job_id in self._leases_lost:
                raise LeaseLost(job.job_id)
            if done == total or time.monotonic() - last[0] > 0.5:
                last[0] = time.monotonic()
                self.store.set_progress(job.job_id, done, total)

        background_image = None
        if params.bg_image_key:
            with self.artifacts.open(params.bg_image_key) as f:
                background_image = decode_image(f.read(), settings.hd_max_pixels).rgb
        with tempfile.TemporaryDirectory(prefix="bgr-video-") as tmp:
            src = self.artifacts.local_path(job.input_key) if job.input_key else None
            if src is None:  # a URL, or a store without local files: work on a local copy
                src = Path(tmp) / "input"
                if job.input_key:
                    with self.artifacts.open(job.input_key) as f, open(src, "wb") as out:
                        shutil.copyfileobj(f, out)
                else:  # streamed to disk: a 500 MB clip never sits in memory
                    with open(src, "wb") as out:
                        self._fetch(job.input_url, settings.upload_max_bytes, sink=out)
            self._require_video_credits(job, str(src))
            dst = Path(tmp) / f"output.{fmt}"
            model_id = params.model_id
            if model_id == AUTO:
                model_id, report["subject"] = self._auto_video(str(src), params.max_duration_s)
                report["model_id"] = model_id
            recurrent = self.specs[model_id].recurrent if model_id in self.specs else False

            def submit_chunk(rgbs: list[np.ndarray], warmup: int) -> Callable[[], list]:
                call = self.client.sequence(model_id, rgbs, warmup)

                def wait() -> list:
                    return call.wait(self.model_timeout_s)
                wait.cancel = call.response.cancel  # type: ignore[attr-defined]
                return wait

            result = render_video(
                str(src), str(dst), submit, output_format=fmt,
                background=params.background, background_image=background_image,
                composition=params.composition, max_duration_s=params.max_duration_s,
                window=settings.video_window,
                # a recurrent model is steady by itself: no smoother after it
                smoother=MaskSmoother() if settings.video_smoothing and not recurrent else None,
                decontaminate=settings.video_edge_decontamination, on_progress=progress,
                submit_chunk=submit_chunk if recurrent else None,
                chunk_frames=settings.video_chunk_frames,
                chunk_warmup=settings.video_chunk_warmup, max_pixels=settings.video_max_pixels)
            key = f"jobs/{job.job_id}/attempt-{job.attempts}/output.{fmt}"
            with open(dst, "rb") as f, self.artifacts.writer(key) as out:
                shutil.copyfileobj(f, out)
        return key, VIDEO_MEDIA_TYPES[fmt], round(result.processed_duration_s, 2), report or None

    def _require_video_credits(self, job: Job, path: str) -> None:
        """Before any frame is processed: the owner's balance covers the seconds that will be
        (the clip's length up to the job's cap; the cap itself when the file states no length)."""
        if job.owner is None or self.settings.price_video_second <= 0:
            return
        info = video.probe(path)
        cap = job.params.max_duration_s
        seconds = (video.processed_duration(info.duration_s, cap) if info.duration_known
                   else cap or 0.0)
        needed = round(seconds * self.settings.price_video_second, 4)
        balance = self.keys.balance(job.owner)
        if balance + 1e-9 < needed:
            raise InsufficientCredits(
                f"Not enough credits: this clip needs {needed:g} ({seconds:.2f} s), the balance "
                f"is {balance:g}.", {"required": needed, "balance": balance})

    # ---- webhooks and retention -------------------------------------------------------------
    def _webhook_loop(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while not self._stop.is_set():
                try:
                    self._deliver_webhooks(loop)
                except Exception:  # noqa: BLE001 - keep delivering
                    log.exception("webhook loop")
                self._stop.wait(self.settings.job_poll_s)
        finally:
            loop.close()  # its sockets and selector go with it

    def _deliver_webhooks(self, loop: asyncio.AbstractEventLoop, most: int = 20) -> None:
        """Up to `most` due deliveries, each claimed just before it is sent (its claim holds
        it for three delivery timeouts: far longer than one attempt takes, so another replica
        never sends it meanwhile)."""
        timeout = self.fetch_policy.timeout_s
        for _ in range(most):
            claimed = self.store.claim_webhooks(hold_s=timeout * 3, limit=1)
            if not claimed:
                return
            job = claimed[0]
            event = "job_completed" if job.state == COMPLETED else "job_failed"
            results: Any = ({"output_url": self.output_url(job.job_id),
                             "media_type": job.output_media_type} if job.state == COMPLETED
                            else {"error": job.error})
            payload = webhooks.build_payload(event, job.job_id, [results], job.webhook_secret)
            attempt = job.webhook_attempts + 1
            delivery_id = f"{job.job_id}-{event}"  # the same for every retry: receivers dedupe
            result = loop.run_until_complete(webhooks.deliver(
                job.webhook_url, payload, job.webhook_secret, self.fetch_policy,
                delivery_id=delivery_id))
            delay = webhooks.next_retry_delay_s(result, attempt)
            next_at = None if delay is None else now() + timedelta(seconds=delay)
            if not result.ok:
                log.warning("webhook for job %s not delivered (attempt %d%s): %s", job.job_id,
                            attempt, ", giving up" if delay is None else ", will retry",
                            result.error,
                            extra={"job_id": job.job_id, "webhook_attempt": attempt})
            self.store.record_delivery(job.job_id, delivery_id, event, attempt,
                                       result.ok, result.status_code, result.error,
                                       result.duration_ms, next_at)

    def output_url(self, job_id: str) -> str:
        base = (self.settings.public_base_url or "").rstrip("/")
        return f"{base}/api/download/{job_id}"

    def _maintenance(self) -> None:
        for job_id in self.store.expired_outputs():
            key = self.store.drop_output(job_id)
            if key:
                self.artifacts.delete(key)
        retention = self.settings.job_output_ttl_s
        self.artifacts.sweep(retention, prefix="uploads/")
        self.artifacts.sweep(retention, prefix="inputs/")



def _run_async(coro):
    """Run a coroutine from a worker thread on a private loop. Unlike `asyncio.run`, closing
    does not wait for the loop's executor (a slow DNS lookup cannot outlast the fetch timeout)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
