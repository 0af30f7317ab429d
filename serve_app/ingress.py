"""HTTP ingress: the one deployment that holds every model deployment's handle.

Requests are decoded and checked here (size limits, parameters, model ids); masks are computed
by each model's own deployment (`DeploymentHandle`); effects are composited here at full
resolution. The routes come from mixins, one per contract: `ImageApiV1` (spec 000),
`ShotgunApi` (spec 003, which fans out to several model deployments at once) and `JobsApi`
(async jobs: HD images, /v1/jobs, uploads and downloads; the `JobWorker` deployment runs them).
Typed method twins serve Python callers of `serve.get_app_handle(...)`.
"""

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi.responses import FileResponse, JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from pipelines.catalog import Price
from pipelines.errors import ModelUnavailable, UnknownModel
from serve_app.app import VERSION, app
from serve_app.backgrounds_api import BackgroundsApi
from serve_app.billing import Billing
from serve_app.config import IngressSetup
from serve_app.core.artifacts import artifact_store
from serve_app.core.dependencies import DependencyProbe, database_check, storage_check
from serve_app.core.jobs import JobStore
from serve_app.core.keys import KeyStore
from serve_app.core.results import ResultLinks
from serve_app.core.settings import apply_log_level, get_settings
from serve_app.core.store import Store
from serve_app.errors import OUTAGES
from serve_app.image_api import ImageApiV1
from serve_app.jobs_api import JobsApi
from serve_app.schemas import DependencyHealth, Health, ModelHealth, ModelInfo, PoolHealth
from serve_app.shotgun import ShotgunApi
from serve_app.video_api import VideoApi

log = logging.getLogger("ray.serve.bgremove")
STUDIO = Path(__file__).parent / "studio"
STUDIO_FILES = {"studio.js": "text/javascript", "studio.css": "text/css"}
T = TypeVar("T")


def _replica_counts() -> dict[str, tuple[int, str]]:
    """Running replicas and state per deployment of this application, from the controller."""
    try:
        app_name = serve.get_replica_context().app_name
        status = serve.status().applications[app_name]
    except Exception:  # noqa: BLE001 - health must answer even if the controller does not
        return {}
    return {
        name: (d.replica_states.get("RUNNING", 0), str(getattr(d.status, "value", d.status)))
        for name, d in status.deployments.items()
    }


class CpuSlots:
    """Heavy pixel work in worker threads, at most `n` jobs at once (bounds CPU and memory).

    A slot is freed when the thread finishes, not when the awaiting request goes away: a
    cancelled request's job keeps running (threads cannot be stopped) and keeps its slot.
    """

    def __init__(self, n: int) -> None:
        self._slots = asyncio.Semaphore(n)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        await self._slots.acquire()
        try:
            future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.shield(future)


@serve.ingress(app)
class Ingress(ImageApiV1, BackgroundsApi, ShotgunApi, JobsApi, VideoApi, Billing):
    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        catalog: list[dict[str, Any]],
        missing: dict[str, str],
        setup: dict[str, Any],
        worker: DeploymentHandle | None = None,
        prompter: DeploymentHandle | None = None,
        generator: DeploymentHandle | None = None,
    ) -> None:
        self.handles = models
        self.prompter = prompter  # the click/box prompt model, when its weights are installed
        self.generator = generator  # /image/generate/v1, when a pipeline is configured
        self.catalog = {m["id"]: m for m in catalog}
        self.prices = {m["id"]: Price.model_validate(m.get("price") or {}) for m in catalog}
        self.missing = missing
        self.setup = IngressSetup.model_validate(setup)
        self.default_model = self.setup.default_model
        self.settings = get_settings()
        apply_log_level(self.settings)
        if not self.settings.auth_enabled:
            log.warning("!" * 78 + "\n  AUTHENTICATION IS OFF (BGR_AUTH_ENABLED=false): every "
                        "client may call every endpoint,\n  with no rate limits and no "
                        "credits. Only for one user on one machine.\n" + "!" * 78)
        self.store = Store.from_settings(self.settings)
        self.jobs = JobStore.from_settings(self.settings)
        self.keys = KeyStore.from_settings(self.settings)
        self.artifacts = artifact_store(self.settings)
        self.worker = worker
        data_dir = self.settings.data_dir.expanduser().resolve()
        self.links = ResultLinks(data_dir / "results", self.settings.result_ttl_s)
        # Compositing and encoding are CPU- and memory-heavy (peak ~90 bytes per pixel: 2.2 GB
        # for a 25 MP cut-out); at most this many run at once, whatever the request load.
        self.cpu = CpuSlots(self.settings.composite_concurrency or os.cpu_count() or 1)
        # /health's dependency checks: one real round-trip per 2 s, whatever the polling rate
        self.database_probe = DependencyProbe(lambda: database_check(self.jobs.engine),
                                              "unavailable")
        self.storage_probe = DependencyProbe(
            lambda: storage_check(self.artifacts, self.settings.min_free_storage_bytes),
            "not_writable")

    def _handle(self, model_id: str) -> DeploymentHandle:
        if model_id in self.handles:
            return self.handles[model_id]
        if model_id in self.missing:
            raise ModelUnavailable(f"Model '{model_id}' is not available: {self.missing[model_id]}")
        if model_id in self.catalog:
            raise ModelUnavailable(f"Model '{model_id}' is not enabled in this deployment.")
        raise UnknownModel(
            f"Unknown model '{model_id}'. Available: {', '.join(sorted(self.handles)) or 'none'}."
        )

    # ---- service ------------------------------------------------------------------------------
    @app.get("/models", response_model=list[ModelInfo], summary="The model catalog")
    async def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                id=m["id"], name=m["name"], family=m["family"], tier=m["tier"],
                description=m.get("description", ""), available=m["id"] in self.handles,
                detail=self.missing.get(m["id"]),
            )
            for m in self.catalog.values()
        ]

    @app.get("/health/live", include_in_schema=True, summary="Liveness: the process answers")
    async def live(self) -> dict[str, str]:
        """For liveness probes: 200 while this replica serves HTTP, whatever its dependencies
        (a database outage must not get replicas restarted; /health reports it)."""
        return {"status": "alive"}

    async def _dependencies(self) -> dict[str, DependencyHealth]:
        db, storage = await asyncio.gather(asyncio.to_thread(self.database_probe.check),
                                           asyncio.to_thread(self.storage_probe.check))
        if db.ok:
            OUTAGES.recovered("database")
        else:
            OUTAGES.failed("database", db.detail or "unavailable")
        return {name: DependencyHealth(status=c.status, detail=c.detail, latency_ms=c.latency_ms,
                                       free_bytes=c.free_bytes)
                for name, c in (("database", db), ("storage", storage))}

    @app.get("/health", response_model=Health, summary="Service, per-model and per-pool health",
             responses={503: {"model": Health, "description": "a dependency fails"}})
    async def health(self):
        """200 healthy/degraded (a configured model is not serving); 503 unhealthy (the
        database or the storage fails: readiness checks take the replica out of rotation)."""
        replicas = await asyncio.to_thread(_replica_counts)
        models: dict[str, ModelHealth] = {}
        pools: dict[str, PoolHealth] = {}
        for model_id in self.handles:
            running, state = replicas.get(model_id, (0, "UNKNOWN"))
            status = "loaded" if running > 0 else ("unhealthy" if state == "UNHEALTHY" else "starting")
            tier = self.setup.model_pools[model_id]
            options = self.setup.pools[tier]
            models[model_id] = ModelHealth(
                status=status, pool=tier.value, replicas=running,
                detail=None if status == "loaded" else f"deployment state {state}",
            )
            pool = pools.setdefault(tier.value, PoolHealth(
                models=[], replicas=0, ray_actor_options=options.ray_actor_options,
                max_ongoing_requests=options.max_ongoing_requests,
                num_replicas=None if options.autoscaling_config else options.num_replicas,
                autoscaling_config=options.autoscaling_config,
            ))
            pool.models.append(model_id)
            pool.replicas += running
        for model_id, reason in self.missing.items():
            models[model_id] = ModelHealth(
                status="missing", pool=self.catalog[model_id]["tier"], detail=reason
            )
        healthy = all(m.status == "loaded" for m in models.values())
        dependencies = await self._dependencies()
        failing = any(d.status != "ok" for d in dependencies.values())
        health = Health(
            status="unhealthy" if failing else "healthy" if healthy else "degraded",
            version=VERSION, dependencies=dependencies,
            default_model=self.default_model,
            services={model_id: m.status for model_id, m in models.items()},
            models=models, pools=pools,
            features={name: reason or "available" for name, reason in self.setup.features.items()},
        )
        if failing:
            return JSONResponse(health.model_dump(mode="json"), status_code=503,
                                headers={"Retry-After": "5"})
        return health

    @app.get("/studio", include_in_schema=False)
    async def studio(self):
        """The web studio (serve_app/studio/): plain HTML and JavaScript over this API."""
        return FileResponse(STUDIO / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/studio/{name}", include_in_schema=False)
    async def studio_file(self, name: str):
        if name not in STUDIO_FILES:
            raise HTTPException(404, "No such studio file.")
        return FileResponse(STUDIO / name, media_type=STUDIO_FILES[name],
                            headers={"Cache-Control": "no-cache"})

    @app.get("/results/{job_id}/{name}", response_class=FileResponse,
             summary="A shotgun result, downloadable for a limited time (`image_url` in rows)")
    async def result_file(self, job_id: str, name: str):
        found = self.links.find(job_id, name) if self.links.enabled else None
        if found is None:
            raise HTTPException(404, "No such result, or its link has expired.")
        path, remaining = found
        return FileResponse(path, headers={"Cache-Control": f"private, max-age={int(remaining)}"})
