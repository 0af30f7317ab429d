"""What the routers work with, declared in one typed record: settings, the model gateway, the
stores, credits, the job desk and the CPU slots. The ingress replica builds it once
(`Services.build`) and registers it; each route receives it as a FastAPI dependency (`Svc`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends

from serve_app.billing import Credits
from serve_app.config import IngressSetup
from serve_app.core.artifacts import ArtifactStore, artifact_store
from serve_app.core.dependencies import DependencyProbe, database_check, storage_check
from serve_app.core.job_store import JobStore
from serve_app.core.keys import KeyStore
from serve_app.core.results import ResultLinks
from serve_app.core.settings import Settings
from serve_app.core.store import Store
from serve_app.gateway import ModelGateway
from serve_app.job_desk import JobDesk

log = logging.getLogger("ray.serve.bgremove")
T = TypeVar("T")


class CpuSlots:
    """Heavy pixel work in worker threads, at most `n` jobs at once (bounds CPU and memory).

    The threads are its own: pixel work never occupies the event loop's default pool, which
    `asyncio.to_thread` uses for the database (API-key lookups, rate limits, job rows), so
    heavy compositing cannot starve those.

    A slot is freed when the thread finishes, not when the awaiting request goes away: a
    cancelled request's job keeps running (threads cannot be stopped) and keeps its slot.
    """

    def __init__(self, n: int) -> None:
        self._slots = asyncio.Semaphore(n)
        self._threads = ThreadPoolExecutor(n, thread_name_prefix="cpu")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        await self._slots.acquire()
        try:
            future = asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.shield(future)


@dataclass
class Services:
    settings: Settings
    setup: IngressSetup
    models: ModelGateway
    credits: Credits
    desk: JobDesk
    jobs: JobStore
    artifacts: ArtifactStore
    store: Store  # shotgun runs and selections
    links: ResultLinks  # the shotgun's expiring result links
    cpu: CpuSlots
    database_probe: DependencyProbe
    storage_probe: DependencyProbe

    @classmethod
    def build(cls, settings: Settings, setup: IngressSetup, models: ModelGateway,
              worker: Any | None) -> Services:
        """Open the stores named by `settings` (one connection pool each per replica)."""
        jobs = JobStore.from_settings(settings)
        artifacts = artifact_store(settings)
        store = Store.from_settings(settings)
        models.win_rates = store.rates_by_category
        return cls(
            settings=settings, setup=setup, models=models,
            credits=Credits(KeyStore.from_settings(settings)),
            desk=JobDesk(settings, jobs, artifacts, worker), jobs=jobs, artifacts=artifacts,
            store=store,
            links=ResultLinks(artifacts, settings.result_ttl_s),
            # Compositing and encoding are CPU- and memory-heavy (peak ~90 bytes per pixel:
            # 2.2 GB for a 25 MP cut-out); at most this many run at once, whatever the load.
            cpu=CpuSlots(settings.composite_concurrency or os.cpu_count() or 1),
            # /health's dependency checks: one real round-trip per 2 s, whatever the polling
            database_probe=DependencyProbe(lambda: database_check(jobs.engine), "unavailable"),
            storage_probe=DependencyProbe(
                lambda: storage_check(artifacts, settings.min_free_storage_bytes),
                "not_writable"),
        )


_current: Services | None = None


def register(services: Services) -> None:
    """Make `services` what this process's routes receive (one ingress replica per process)."""
    global _current
    _current = services


def services() -> Services:
    if _current is None:
        raise RuntimeError("no Services registered: the ingress deployment builds them")
    return _current


Svc = Annotated[Services, Depends(services)]
