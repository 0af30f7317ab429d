"""Webhook deliveries of ended jobs: which are due, who sends each, and every attempt made.

A job that ends with a `webhook_url` is marked `pending` in the same transaction as its end
(`JobStore`), so no delivery is lost to a crash between the two. A sender claims one due
delivery at a time (its next attempt time moves ahead while it is out) and records each attempt;
`delivered`, `failed` (no attempt left) or `pending` until the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Engine

from serve_app.core.db import now
from serve_app.core.job_schema import jobs, webhook_deliveries

if TYPE_CHECKING:
    from serve_app.core.job_store import Job


def delivery_id(job_id: str, event: str) -> str:
    """The id a job's delivery of `event` carries, the same for every retry (receivers dedupe
    on it): up to 36 + 1 + 13 characters."""
    return f"{job_id}-{event}"


class WebhookOutbox:
    def __init__(self, engine: Engine, serial: AbstractContextManager,
                 get_job: Callable[[str], Job | None]) -> None:
        self.engine, self._serial, self._get_job = engine, serial, get_job

    def claim(self, hold_s: float, limit: int = 20) -> list[Job]:
        """Due webhook deliveries, each taken by this caller alone: its next attempt time moves
        `hold_s` ahead, so another worker replica does not send it at the same time."""
        t = now()
        with self._serial, self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.job_id, jobs.c.webhook_attempts).where(and_(
                jobs.c.webhook_state == "pending", jobs.c.webhook_next_at <= t))
                .order_by(jobs.c.webhook_next_at).limit(limit)).all()
        claimed = []
        for row in rows:
            with self._serial, self.engine.begin() as conn:
                done = conn.execute(update(jobs).where(and_(
                    jobs.c.job_id == row.job_id, jobs.c.webhook_state == "pending",
                    jobs.c.webhook_attempts == row.webhook_attempts,
                    jobs.c.webhook_next_at <= t)).values(
                        webhook_next_at=t + timedelta(seconds=hold_s)))
            if done.rowcount == 1:
                claimed.append(row.job_id)
        return [job for job in map(self._get_job, claimed) if job is not None]

    def record(self, job_id: str, delivery_id: str, event: str, attempt: int, ok: bool,
               status_code: int | None, error: str | None, duration_ms: int,
               next_at: datetime | None) -> None:
        """Store one delivery attempt; the job's webhook is `delivered`, `failed` (no next
        attempt) or stays `pending` until `next_at`."""
        t = now()
        state = "delivered" if ok else ("pending" if next_at is not None else "failed")
        with self._serial, self.engine.begin() as conn:
            conn.execute(webhook_deliveries.insert().values(
                job_id=job_id, delivery_id=delivery_id, event=event, attempt=attempt, ok=ok,
                status_code=status_code, error=error, duration_ms=duration_ms, at=t))
            # only the attempt that follows the last recorded one moves the state on
            conn.execute(update(jobs).where(and_(
                jobs.c.job_id == job_id, jobs.c.webhook_attempts == attempt - 1)).values(
                webhook_state=state, webhook_attempts=attempt, webhook_next_at=next_at,
                updated_at=t))

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        with self._serial, self.engine.connect() as conn:
            rows = conn.execute(select(webhook_deliveries)
                                .where(webhook_deliveries.c.job_id == job_id)
                                .order_by(webhook_deliveries.c.id)).all()
        return [dict(r._mapping) for r in rows]
