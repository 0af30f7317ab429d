"""The job worker deployment: runs async jobs (HD images, /v1/jobs) from the durable store.

Requests never run jobs: the ingress writes a job row and pokes a worker (`wake`). Each replica
runs one polling thread that claims queued jobs (a lease in the database, renewed while the job
runs) and executes at most `job_concurrency` at once in a thread pool; what a job does is
`deployments.job_processors`. If a replica dies, its leases expire and another replica (or the
restarted app) resumes the job; see `serve_app.core.job_store`. A second thread sends webhooks
(`deployments.webhook_dispatcher`); the polling thread also sweeps expired outputs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray.serve.handle import DeploymentHandle

from deployments.job_processors import JobProcessors
from deployments.metrics import CREDITS_CHARGED, JOBS
from deployments.model_client import ModelClient
from deployments.webhook_dispatcher import WebhookDispatcher
from pipelines.auto import ServedModel
from pipelines.catalog import ModelSpec
from pipelines.errors import InvalidRequest, PayloadTooLarge, ServiceError
from serve_app.core import retention
from serve_app.core.artifacts import artifact_store
from serve_app.core.dependencies import as_dependency_error
from serve_app.core.errors import DependencyUnavailable, InsufficientCredits, ProcessingError
from serve_app.core.job_store import Job, JobStore
from serve_app.core.keys import Charge, KeyStore
from serve_app.core.output_links import output_link
from serve_app.core.settings import apply_log_level, get_settings
from serve_app.core.store import Store

log = logging.getLogger("ray.serve.bgremove")
_MAINTENANCE_EVERY_S = 30.0
_JOBS_GAUGE_EVERY_S = 5.0  # how often the jobs-by-state gauge is refreshed
_PROGRESS_EVERY_S = 0.5  # how often a video's frames-done count is written
# Failures caused by the client's input (its file, URL or parameters): 4xx on the result
# routes, with the reason. Anything else that fails a job is ours: 5xx.
CLIENT_FAULTS = (InvalidRequest, PayloadTooLarge, ProcessingError, InsufficientCredits)


class LeaseLost(Exception):
    """This worker's lease on a job expired and another worker took the job over."""


_MAX_RETRY_S = 300.0  # the longest wait before a job met a storage outage is retried

class JobWorker:
    def __init__(self, models: dict[str, DeploymentHandle], model_timeout_s: float = 600.0,
                 prompter: DeploymentHandle | None = None,
                 text_segmenter: DeploymentHandle | None = None,
                 detector: DeploymentHandle | None = None,
                 auto_models: list[ServedModel] | None = None,
                 auto_compare: bool = True,
                 specs: dict[str, dict[str, Any]] | None = None) -> None:
        self.settings = s = get_settings()
        apply_log_level(s)
        self.store = JobStore.from_settings(s)
        self.artifacts = artifact_store(s)
        self.worker_id = f"worker-{uuid.uuid4().hex[:10]}"
        self._leases_lost: set[str] = set()  # job ids whose lease this worker lost
        self._running: set[str] = set()  # job ids being processed here
        selections = Store.from_settings(s)  # shotgun picks, for auto
        specs_ = {m: ModelSpec.model_validate(e) for m, e in (specs or {}).items()}
        # model calls and `model=auto`, the same way as the ingress makes them
        self.client = ModelClient(models, specs_, detector, auto_models or [], auto_compare,
                                  selections.rates_by_category)
        fetch_policy = s.fetch_policy(s.hd_max_upload_bytes)
        self.processors = JobProcessors(s, self.client, specs_, self.artifacts,
                                        KeyStore.from_settings(s), fetch_policy,
                                        model_timeout_s, prompter, text_segmenter)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._slots = threading.Semaphore(s.job_concurrency)
        self._pool = ThreadPoolExecutor(s.job_concurrency, thread_name_prefix="job")
        self._thread = threading.Thread(target=self._loop, name="job-worker", daemon=True)
        self._thread.start()
        self.webhooks = WebhookDispatcher(self.store.webhooks, fetch_policy, self.output_url,
                                          s.job_poll_s)
        log.info("job worker %s: up to %d jobs at once", self.worker_id, s.job_concurrency)

    # ---- Serve hooks and handle methods -----------------------------------------------------
    def wake(self) -> None:
        """Look for work now (called by the ingress after it queued a job)."""
        self._wake.set()

    def check_health(self) -> None:
        if not (self._thread.is_alive() and self.webhooks.alive()):
            raise RuntimeError("job worker thread died")

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """What the queue-depth autoscaling policy scales by (deployments/autoscaling.py):
        jobs waiting for any worker, jobs running here, and this replica's job slots."""
        waiting = await asyncio.to_thread(self.store.count_waiting)
        return {"jobs_waiting": float(waiting), "jobs_running": float(len(self._running)),
                "job_slots": float(self.settings.job_concurrency)}

    def _shutdown(self) -> None:
        """Stop claiming and delivering (Serve calls `__del__` when the replica goes, e.g.
        scaled down): the jobs still running here go back to the queue at once, attempt not
        spent, rather than waiting for their leases to expire."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self.webhooks.stop()
        self._pool.shutdown(wait=False)
        for job_id in list(self._running):
            self._leases_lost.add(job_id)  # a video stops at its next frame
            try:
                self.store.release(job_id, self.worker_id, "its worker replica stopped", 0)
            except Exception:  # noqa: BLE001 - its lease expires instead
                log.exception("job %s: could not hand it back", job_id)

    def __del__(self) -> None:
        self._shutdown()

    def output_url(self, job: Job) -> str:
        return output_link(self.settings, self.artifacts, job)

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
                    retention.sweep(self.store, self.artifacts, self.settings.job_output_ttl_s)
            except Exception:  # noqa: BLE001 - the loop must survive a database hiccup
                log.exception("job worker loop")
            self._wake.wait(self.settings.job_poll_s)
            self._wake.clear()

    def _heartbeat(self, job: Job, done: threading.Event) -> None:
        """Renew the job's lease until `done`; a lost lease marks the job to stop."""
        lease = self.settings.job_lease_s
        while not done.wait(lease / 3):
            try:
                if not self.store.heartbeat(job.job_id, self.worker_id, lease):
                    log.warning("job %s: lease lost; stopping it here", job.job_id)
                    self._leases_lost.add(job.job_id)  # the work stops at its next step
                    return
            except Exception:  # noqa: BLE001 - a database hiccup: try again next beat
                log.exception("job %s: heartbeat", job.job_id)

    def _progress(self, job: Job):
        """The video progress callback: stops the job once its lease is lost, and stores the
        frames done every `_PROGRESS_EVERY_S` and on the last frame."""
        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            if job.job_id in self._leases_lost:
                raise LeaseLost(job.job_id)
            if done == total or time.monotonic() - last[0] > _PROGRESS_EVERY_S:
                last[0] = time.monotonic()
                self.store.set_progress(job.job_id, done, total)
        return progress

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        fields = {"job_id": job.job_id, "api": job.api, "kind": job.kind, "key_id": job.owner,
                  "model": job.params.model_id, "attempt": job.attempts}
        done = threading.Event()
        threading.Thread(target=self._heartbeat, args=(job, done), daemon=True).start()
        self._running.add(job.job_id)
        try:
            out = self.processors.process(job, self._progress(job))
            price = (self.settings.price_video_second if job.kind == "video"
                     else self.settings.price_image)
            charge = Charge(f"{job.api}:{job.kind}", out.units, round(out.units * price, 4))
            if not self.store.complete(job.job_id, self.worker_id, out.key, out.media_type,
                                       self.settings.job_output_ttl_s, charge, out.report):
                self.artifacts.delete(out.key)  # taken over meanwhile: only our attempt's file
                log.info("job %s: finished after its lease was lost; result dropped",
                         job.job_id, extra={**fields, "state": "superseded"})
                return
            if job.owner is not None and charge.credits > 0:
                CREDITS_CHARGED.inc(charge.credits, {"operation": charge.operation})
            log.info("job %s completed (%s)", job.job_id, out.media_type, extra={
                **fields, "state": "completed", "credits": charge.credits,
                "duration_ms": round((time.monotonic() - started) * 1e3, 1)})
        except LeaseLost:  # another worker holds the job now: it is theirs to finish
            log.info("job %s: stopped after its lease was lost", job.job_id,
                     extra={**fields, "state": "superseded"})
        except Exception as exc:
            if not self._released(job, exc, fields):
                self._failed(job, exc, fields, started)
        finally:
            done.set()
            self._running.discard(job.job_id)
            self._leases_lost.discard(job.job_id)
            self._drop_inputs(job)
            self._slots.release()
            self._wake.set()

    def _released(self, job: Job, exc: Exception, fields: dict) -> bool:
        """A storage outage (a bucket that cannot be reached) is not the job's fault: it goes
        back to the queue, attempt not spent, and resumes when the storage is back."""
        mapped = as_dependency_error(exc)
        if not isinstance(mapped, DependencyUnavailable) or \
                (mapped.details or {}).get("dependency") != "storage":
            return False
        # 5 s, doubling with each earlier hand-back of this job, at most 5 minutes: a long
        # outage costs a retry now and then, not a model run every few seconds
        earlier = sum("back in the queue" in e.reason for e in self.store.events(job.job_id))
        retry_in = min(_MAX_RETRY_S, float((mapped.details or {}).get("retry_after_s", 5))
                       * 2 ** min(earlier, 16))
        try:
            if self.store.release(job.job_id, self.worker_id, mapped.message, retry_in):
                log.warning("job %s: storage unavailable, back in the queue (%s)", job.job_id,
                            mapped.message, extra={**fields, "state": "queued"})
        except Exception:  # noqa: BLE001 - the database too: the lease expires, as for a lost worker
            log.exception("job %s: could not release it", job.job_id)
        return True  # released, or another worker's now: nothing to record as a failure

    def _failed(self, job: Job, exc: Exception, fields: dict, started: float) -> None:
        if isinstance(exc, ServiceError):
            self.store.fail(job.job_id, exc.message, worker_id=self.worker_id,
                            kind="input" if isinstance(exc, CLIENT_FAULTS) else "internal")
            log.info("job %s failed: %s", job.job_id, exc.message, extra={
                **fields, "state": "failed",
                "duration_ms": round((time.monotonic() - started) * 1e3, 1)})
            return
        log.error("job %s failed", job.job_id, exc_info=exc, extra={**fields, "state": "failed"})
        self.store.fail(job.job_id, f"Processing failed ({type(exc).__name__})",
                        worker_id=self.worker_id)

    def _drop_inputs(self, job: Job) -> None:
        """A job's private inputs (HD/video submit) are not needed once it has ended."""
        if not (job.input_key and job.input_key.startswith("inputs/")):
            return
        try:
            if self.store.get(job.job_id).state in ("completed", "failed"):
                self.artifacts.delete_prefix(f"inputs/{job.job_id}/")
        except Exception:  # noqa: BLE001 - retention sweeps it later
            log.exception("job %s: input cleanup", job.job_id)
