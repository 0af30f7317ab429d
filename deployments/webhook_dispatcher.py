"""Sends the webhooks of ended jobs from the durable outbox (`serve_app.core.webhook_outbox`).

One thread with its own event loop per worker replica, so a slow receiver never delays claiming
jobs. Each delivery is claimed just before it is sent and held for three delivery timeouts (far
longer than one attempt takes), so another replica never sends it meanwhile; every attempt is
recorded and retried with backoff (`pipelines.webhooks`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pipelines import webhooks
from pipelines.fetch import FetchPolicy
from serve_app.core import webhook_outbox
from serve_app.core.db import now
from serve_app.core.job_schema import COMPLETED
from serve_app.core.job_store import Job
from serve_app.core.webhook_outbox import WebhookOutbox

log = logging.getLogger("ray.serve.bgremove")


class WebhookDispatcher:
    def __init__(self, outbox: WebhookOutbox, policy: FetchPolicy,
                 output_url: Callable[[Job], str], poll_s: float) -> None:
        self.outbox, self.policy, self.output_url, self.poll_s = (outbox, policy, output_url,
                                                                  poll_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-webhooks", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while not self._stop.is_set():
                try:
                    self.deliver_due(loop)
                except Exception:  # noqa: BLE001 - keep delivering
                    log.exception("webhook loop")
                self._stop.wait(self.poll_s)
        finally:
            loop.close()  # its sockets and selector go with it

    def deliver_due(self, loop: asyncio.AbstractEventLoop, most: int = 20) -> None:
        """Up to `most` due deliveries, one claimed at a time."""
        timeout = self.policy.timeout_s
        for _ in range(most):
            claimed = self.outbox.claim(hold_s=timeout * 3, limit=1)
            if not claimed:
                return
            job = claimed[0]
            event = "job_completed" if job.state == COMPLETED else "job_failed"
            results: Any = ({"output_url": self.output_url(job),
                             "media_type": job.output_media_type} if job.state == COMPLETED
                            else {"error": job.error})
            payload = webhooks.build_payload(event, job.job_id, [results], job.webhook_secret)
            attempt = job.webhook_attempts + 1
            delivery_id = webhook_outbox.delivery_id(job.job_id, event)
            result = loop.run_until_complete(webhooks.deliver(
                job.webhook_url, payload, job.webhook_secret, self.policy,
                delivery_id=delivery_id))
            delay = webhooks.next_retry_delay_s(result, attempt)
            next_at = None if delay is None else now() + timedelta(seconds=delay)
            if not result.ok:
                log.warning("webhook for job %s not delivered (attempt %d%s): %s", job.job_id,
                            attempt, ", giving up" if delay is None else ", will retry",
                            result.error,
                            extra={"job_id": job.job_id, "webhook_attempt": attempt})
            self.outbox.record(job.job_id, delivery_id, event, attempt, result.ok,
                               result.status_code, result.error, result.duration_ms, next_at)
