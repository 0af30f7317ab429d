"""Durable async jobs: the state machine, its audit trail and worker leases.

States (spec 001): `created` -> `processing` -> `completed` | `failed`, and `created` ->
`failed`. A started job is `processing` from the moment it is queued; a worker *claims* it by
taking a lease (`lease_owner`, `lease_expires_at`) and renews the lease while it works. A worker
that dies stops renewing: once the lease has expired another worker (or the same app after a
restart) claims the job again and runs it from the start, up to `max_attempts`; after that the
job fails with the reason. So no job stays `processing` forever. Every transition is a row in
`job_events` (from, to, reason, time). A job that ends with a webhook URL is queued in the same
transaction for `serve_app.core.webhook_outbox`; uploads are `serve_app.core.upload_records`.

A claim picks the oldest claimable row (`FOR UPDATE SKIP LOCKED` on PostgreSQL: a row another
worker is claiming is skipped) and takes it with a guarded `UPDATE`, checking the row count, so
it is safe on SQLite and PostgreSQL alike. All methods are synchronous and thread-safe; the
async callers run them in worker threads.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from serve_app.core.db import as_utc, connect, now
from serve_app.core.job_params import JobParams
from serve_app.core.job_schema import (
    COMPLETED,
    CREATED,
    FAILED,
    PROCESSING,
    TERMINAL,
    job_events,
    job_progress,
    jobs,
)
from serve_app.core.keys import Charge, api_keys, apply_charge
from serve_app.core.upload_records import UploadRecords
from serve_app.core.webhook_outbox import WebhookOutbox

__all__ = ["COMPLETED", "CREATED", "FAILED", "PROCESSING", "TERMINAL", "Event", "Job",
           "JobStore", "TooManyJobs", "TransitionError", "scoped_idempotency_key"]


class TooManyJobs(Exception):
    """The owner already has `limit` jobs in progress."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"{active} jobs in progress (limit {limit})")
        self.active, self.limit = active, limit


def scoped_idempotency_key(owner: str | None, key: str, api: str) -> str:
    """Idempotency keys are per API key and per API: two clients may pick the same one, and a
    key used on the HD submit never answers a `/v1/jobs` create with that HD job."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"{api}:{owner or '-'}:{digest}"


class TransitionError(Exception):
    """The job is not in a state that allows the requested change."""

    def __init__(self, job_id: str, state: str, wanted: str) -> None:
        super().__init__(f"job {job_id} is {state}, cannot go to {wanted}")
        self.job_id, self.state, self.wanted = job_id, state, wanted


@dataclass(frozen=True)
class Job:
    job_id: str
    api: str
    kind: str
    state: str
    params: JobParams
    input_key: str | None
    input_url: str | None
    output_key: str | None
    output_media_type: str | None
    error: str | None
    idempotency_key: str | None
    webhook_url: str | None
    webhook_secret: str | None
    webhook_state: str | None
    webhook_attempts: int
    attempts: int
    lease_owner: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    output_expires_at: datetime | None
    owner: str | None = None
    result: dict[str, Any] | None = None
    error_kind: str | None = None  # "input" (a 4xx: the client's input) or "internal" (a 5xx)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_used(self) -> str:
        """The model that ran: `auto`'s choice once the worker made it, else the one asked."""
        return str((self.result or {}).get("model_id") or self.params.model_id)

    @classmethod
    def from_row(cls, row) -> Job:
        m = row._mapping
        names = [f for f in cls.__dataclass_fields__ if f != "extra"]
        values = {n: m[n] for n in names}
        for n in ("created_at", "updated_at", "started_at", "completed_at", "output_expires_at"):
            values[n] = as_utc(values[n])
        try:
            values["params"] = JobParams.from_stored(values["params"])
        except ValidationError:
            values["params"] = JobParams.unreadable()
        return cls(**values)


@dataclass(frozen=True)
class Event:
    from_state: str | None
    to_state: str
    reason: str
    at: datetime


class JobStore:
    def __init__(self, url: str, max_attempts: int = 3) -> None:
        self.engine, self._serial = connect(url)
        self.max_attempts = max_attempts
        self.webhooks = WebhookOutbox(self.engine, self._serial, self.get)  # due deliveries
        self.uploads = UploadRecords(self.engine, self._serial)  # /v1 uploads and their owners

    @classmethod
    def from_settings(cls, settings) -> JobStore:
        return cls(settings.resolved_database_url(), settings.job_max_attempts)

    def close(self) -> None:
        self.engine.dispose()

    # ---- creating and reading ---------------------------------------------------------------
    def create(self, *, api: str, kind: str, params: JobParams, input_key: str | None = None,
               input_url: str | None = None, start: bool = False,
               idempotency_key: str | None = None, webhook_url: str | None = None,
               webhook_secret: str | None = None, job_id: str | None = None,
               owner: str | None = None, max_active: int | None = None) -> tuple[Job, bool]:
        """A new job (`created`, or `processing` = queued when `start`); with an idempotency key
        already used (by the same owner), the existing job and False instead. With
        `max_active`, raises `TooManyJobs` when starting it would exceed that many of the
        owner's jobs in progress."""
        if idempotency_key is not None:
            idempotency_key = scoped_idempotency_key(owner, idempotency_key, api)
            existing = self._by_idempotency_key(idempotency_key)
            if existing is not None:
                return existing, False
        job_id = job_id or str(uuid.uuid4())
        t = now()
        try:
            with self._serial, self.engine.begin() as conn:
                if start:
                    self._check_active(conn, owner, max_active, t)
                conn.execute(jobs.insert().values(
                    job_id=job_id, api=api, kind=kind, state=CREATED, params=params.stored(),
                    input_key=input_key, input_url=input_url, idempotency_key=idempotency_key,
                    webhook_url=webhook_url, webhook_secret=webhook_secret, webhook_attempts=0,
                    attempts=0, created_at=t, updated_at=t, owner=owner))
                self._event(conn, job_id, None, CREATED, "job created", t)
                if start:
                    self._start(conn, job_id, None, t)
        except (IntegrityError, TooManyJobs):
            # A concurrent request with the same idempotency key won the race (this one may
            # have waited for it at the job limit): that job is the answer.
            if idempotency_key is not None:
                existing = self._by_idempotency_key(idempotency_key)
                if existing is not None:
                    return existing, False
            raise
        job = self.get(job_id)
        assert job is not None
        return job, True

    def get(self, job_id: str) -> Job | None:
        with self._serial, self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.job_id == job_id)).first()
        return Job.from_row(row) if row else None

    def events(self, job_id: str) -> list[Event]:
        with self._serial, self.engine.connect() as conn:
            rows = conn.execute(select(job_events).where(job_events.c.job_id == job_id)
                                .order_by(job_events.c.id)).all()
        return [Event(r.from_state, r.to_state, r.reason, as_utc(r.at)) for r in rows]

    def find_idempotent(self, owner: str | None, key: str, api: str) -> Job | None:
        """The job an earlier request of this owner created with this Idempotency-Key."""
        return self._by_idempotency_key(scoped_idempotency_key(owner, key, api))

    def _by_idempotency_key(self, key: str) -> Job | None:
        with self._serial, self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.idempotency_key == key)).first()
        return Job.from_row(row) if row else None

    # ---- transitions ------------------------------------------------------------------------
    def start(self, job_id: str, params: JobParams | None = None,
              max_active: int | None = None) -> Job:
        """`created` -> `processing` (queued for a worker), with `params` replacing the job's;
        `TooManyJobs` when its owner has `max_active` jobs in progress already."""
        t = now()
        with self._serial, self.engine.begin() as conn:
            row = conn.execute(select(jobs.c.state, jobs.c.owner)
                               .where(jobs.c.job_id == job_id)).first()
            if row is None:
                raise KeyError(job_id)
            if row.state != CREATED:
                raise TransitionError(job_id, row.state, PROCESSING)
            self._check_active(conn, row.owner, max_active, t)
            self._start(conn, job_id, params, t)
        job = self.get(job_id)
        assert job is not None
        return job

    @staticmethod
    def _check_active(conn, owner: str | None, max_active: int | None, t: datetime) -> None:
        if owner is None or max_active is None:
            return
        # Writing the owner's key row first serialises its job starts: PostgreSQL locks the
        # row, SQLite the database, until this transaction ends; so two replicas cannot both
        # see "3 of 4" and start a fifth.
        conn.execute(update(api_keys).where(api_keys.c.key_id == owner)
                     .values(last_used_at=t))
        active = conn.execute(select(func.count()).select_from(jobs).where(
            jobs.c.owner == owner, jobs.c.state == PROCESSING)).scalar_one()
        if active >= max_active:
            raise TooManyJobs(active, max_active)

    def _start(self, conn, job_id: str, params: JobParams | None, t: datetime) -> None:
        values: dict[str, Any] = {"state": PROCESSING, "started_at": t, "updated_at": t}
        if params is not None:
            values["params"] = params.stored()
        done = conn.execute(update(jobs).where(and_(jobs.c.job_id == job_id,
                                                    jobs.c.state == CREATED)).values(**values))
        if done.rowcount != 1:
            raise TransitionError(job_id, "not created", PROCESSING)
        self._event(conn, job_id, CREATED, PROCESSING, "started; queued for a worker", t)

    def claim(self, worker_id: str, lease_s: float) -> Job | None:
        """Take the oldest queued job, or one whose worker's lease expired. A job that has used up
        `max_attempts` is failed instead of claimed."""
        t = now()
        claimable = and_(jobs.c.state == PROCESSING,
                         or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < t))
        for _ in range(5):  # another worker may win the race for the same row; try the next
            with self._serial, self.engine.begin() as conn:
                # PostgreSQL: rows another worker is claiming are skipped, not waited for or
                # raced (SQLite, one writer at a time, renders no FOR UPDATE)
                row = conn.execute(select(jobs.c.job_id, jobs.c.attempts, jobs.c.lease_owner)
                                   .where(claimable).order_by(jobs.c.started_at).limit(1)
                                   .with_for_update(skip_locked=True)).first()
                if row is None:
                    return None
                if row.attempts >= self.max_attempts:
                    self._finish(conn, row.job_id, FAILED, t, error=(
                        f"Processing was interrupted {row.attempts} times (worker lost); "
                        "giving up."), expected_owner=row.lease_owner, check_lease=False)
                    continue
                done = conn.execute(update(jobs).where(and_(jobs.c.job_id == row.job_id, claimable))
                                    .values(lease_owner=worker_id, attempts=row.attempts + 1,
                                            lease_expires_at=t + timedelta(seconds=lease_s),
                                            updated_at=t))
                if done.rowcount != 1:
                    continue
                if row.attempts:
                    self._event(conn, row.job_id, PROCESSING, PROCESSING,
                                f"previous worker lost (lease expired); resumed by {worker_id}, "
                                f"attempt {row.attempts + 1}", t)
                else:
                    self._event(conn, row.job_id, PROCESSING, PROCESSING,
                                f"claimed by worker {worker_id}", t)
            return self.get(row.job_id)
        return None

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        """Renew the lease; False if this worker no longer holds it (the job was taken over)."""
        t = now()
        with self._serial, self.engine.begin() as conn:
            done = conn.execute(update(jobs).where(and_(
                jobs.c.job_id == job_id, jobs.c.state == PROCESSING,
                jobs.c.lease_owner == worker_id)).values(
                    lease_expires_at=t + timedelta(seconds=lease_s), updated_at=t))
        return done.rowcount == 1

    def release(self, job_id: str, worker_id: str, reason: str, retry_in_s: float) -> bool:
        """Give a job back to the queue without spending an attempt: a dependency it needs (the
        artifact storage) is out, which is no fault of the job's. Any worker may claim it again
        after `retry_in_s`. False if this worker no longer holds it."""
        t = now()
        with self._serial, self.engine.begin() as conn:
            done = conn.execute(update(jobs).where(and_(
                jobs.c.job_id == job_id, jobs.c.state == PROCESSING,
                jobs.c.lease_owner == worker_id, jobs.c.attempts > 0)).values(
                    lease_owner=None, attempts=jobs.c.attempts - 1, updated_at=t,
                    lease_expires_at=t + timedelta(seconds=retry_in_s)))
            if done.rowcount != 1:
                return False
            self._event(conn, job_id, PROCESSING, PROCESSING,
                        f"{reason}; back in the queue, retried in {retry_in_s:g} s", t)
        return True

    def complete(self, job_id: str, worker_id: str, output_key: str, media_type: str,
                 output_ttl_s: float, charge: Charge | None = None,
                 result: dict[str, Any] | None = None) -> bool:
        """Mark the job completed with its output; with `charge`, its owner's key is debited in
        the same transaction (a job is charged once, and only when it completed)."""
        t = now()
        with self._serial, self.engine.begin() as conn:
            done = self._finish(conn, job_id, COMPLETED, t, expected_owner=worker_id,
                                output_key=output_key, output_media_type=media_type,
                                output_expires_at=t + timedelta(seconds=output_ttl_s),
                                result=result)
            if done and charge is not None:
                owner = conn.execute(select(jobs.c.owner)
                                     .where(jobs.c.job_id == job_id)).scalar()
                if owner is not None:
                    apply_charge(conn, owner, charge, job_id=job_id)
            return done

    def fail(self, job_id: str, reason: str, worker_id: str | None = None,
             kind: str = "internal") -> bool:
        """Fail a job: by its worker (`worker_id`), or, when not started yet, by anyone.
        `kind`: "input" when the client's input caused it, "internal" when we did."""
        t = now()
        with self._serial, self.engine.begin() as conn:
            return self._finish(conn, job_id, FAILED, t, error=reason, expected_owner=worker_id,
                                error_kind=kind)

    def _finish(self, conn, job_id: str, state: str, t: datetime, *, error: str | None = None,
                expected_owner: str | None = None, check_lease: bool = True, **values) -> bool:
        cond = [jobs.c.job_id == job_id, jobs.c.state.in_((CREATED, PROCESSING))]
        if check_lease:
            cond.append(jobs.c.lease_owner == expected_owner if expected_owner is not None
                        else jobs.c.state == CREATED)
        row = conn.execute(select(jobs.c.state, jobs.c.webhook_url)
                           .where(jobs.c.job_id == job_id)).first()
        done = conn.execute(update(jobs).where(and_(*cond)).values(
            state=state, error=error, completed_at=t, updated_at=t, lease_owner=None,
            lease_expires_at=None, webhook_state="pending" if row and row.webhook_url else None,
            webhook_next_at=t if row and row.webhook_url else None, **values))
        if done.rowcount != 1:
            return False
        self._event(conn, job_id, row.state, state, error or "output stored", t)
        return True

    @staticmethod
    def _event(conn, job_id: str, from_state: str | None, to_state: str, reason: str,
               t: datetime) -> None:
        conn.execute(job_events.insert().values(job_id=job_id, from_state=from_state,
                                                to_state=to_state, reason=reason[:2000], at=t))

    def count_waiting(self) -> int:
        """Jobs a worker could claim now (started, no live lease): the queue the job workers
        scale by."""
        t = now()
        with self._serial, self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(and_(
                jobs.c.state == PROCESSING,
                or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < t)))).scalar() or 0)

    def count_by_state(self) -> dict[tuple[str, str], int]:
        """Jobs per (state, kind), every combination present (0 where there are none)."""
        with self._serial, self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.state, jobs.c.kind, func.count())
                                .group_by(jobs.c.state, jobs.c.kind)).all()
        counts = {(s, k): 0 for s in (CREATED, PROCESSING, COMPLETED, FAILED)
                  for k in ("image", "video")}
        counts.update({(s, k): int(n) for s, k, n in rows})
        return counts

    # ---- outputs ----------------------------------------------------------------------------
    def drop_output(self, job_id: str) -> str | None:
        """Forget a job's output (downloaded or expired); returns the artifact key to delete."""
        with self._serial, self.engine.begin() as conn:
            key = conn.execute(select(jobs.c.output_key).where(jobs.c.job_id == job_id)).scalar()
            if key is not None:
                conn.execute(update(jobs).where(jobs.c.job_id == job_id)
                             .values(output_key=None, updated_at=now()))
        return key

    def expired_outputs(self, limit: int = 100) -> list[str]:
        with self._serial, self.engine.connect() as conn:
            return list(conn.execute(select(jobs.c.job_id).where(and_(
                jobs.c.output_key.is_not(None), jobs.c.output_expires_at < now()))
                .limit(limit)).scalars())

    # ---- progress -----------------------------------------------------------------------------
    def set_progress(self, job_id: str, current: int, total: int | None) -> None:
        """Frames done of `total`; None: the total is not known (stored as 0)."""
        total = total or 0
        t = now()
        with self._serial, self.engine.begin() as conn:
            done = conn.execute(update(job_progress).where(job_progress.c.job_id == job_id)
                                .values(current=current, total=total, updated_at=t))
            if done.rowcount == 0:
                conn.execute(job_progress.insert().values(job_id=job_id, current=current,
                                                          total=total, updated_at=t))

    def get_progress(self, job_id: str) -> tuple[int, int | None] | None:
        """(frames done, total or None when unknown), or None before the first report."""
        with self._serial, self.engine.connect() as conn:
            row = conn.execute(select(job_progress.c.current, job_progress.c.total)
                               .where(job_progress.c.job_id == job_id)).first()
        return (row.current, row.total or None) if row else None
