"""Service state: the model catalog (`/models`), health per model, pool and dependency
(`/health`, 503 when the database or storage fails) and liveness (`/health/live`)."""

from __future__ import annotations

import asyncio
import threading
import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from ray import serve

from pipelines.catalog import license_terms
from serve_app.app import VERSION
from serve_app.errors import OUTAGES
from serve_app.schemas import DependencyHealth, Health, ModelHealth, ModelInfo, PoolHealth
from serve_app.services import Services, Svc

router = APIRouter()


REPLICAS_CACHE_S = 1.0  # /health is public and never shed: at most one controller call a second
_replicas: tuple[float, dict[str, tuple[int, str]]] = (float("-inf"), {})
_replicas_lock = threading.Lock()


def _replica_counts() -> dict[str, tuple[int, str]]:
    """Running replicas and state per deployment, from the controller at most once a second
    per replica (a flood of probes waits for that one answer; the dependency probes are
    cached likewise)."""
    global _replicas
    with _replicas_lock:
        if time.monotonic() - _replicas[0] > REPLICAS_CACHE_S:
            _replicas = (time.monotonic(), _ask_controller())
        return _replicas[1]


def _ask_controller() -> dict[str, tuple[int, str]]:
    try:
        app_name = serve.get_replica_context().app_name
        status = serve.status().applications[app_name]
    except Exception:  # noqa: BLE001 - health must answer even if the controller does not
        return {}
    return {
        name: (d.replica_states.get("RUNNING", 0), str(getattr(d.status, "value", d.status)))
        for name, d in status.deployments.items()
    }


@router.get("/models", response_model=list[ModelInfo], summary="The model catalog")
async def models(svc: Svc) -> list[ModelInfo]:
    gateway = svc.models
    return [
        ModelInfo(
            id=m["id"], name=m["name"], family=m["family"], tier=m["tier"],
            description=m.get("description", ""), available=m["id"] in gateway.handles,
            detail=gateway.missing.get(m["id"]) or svc.setup.withheld.get(m["id"]),
            license=m["weights"]["license"],
            license_terms=license_terms(m["weights"]["license"]),
        )
        for m in gateway.catalog.values()
    ]


@router.get("/health/live", include_in_schema=True, summary="Liveness: the process answers")
async def live() -> dict[str, str]:
    """For liveness probes: 200 while this replica serves HTTP, whatever its dependencies (a
    database outage must not get replicas restarted; /health reports it)."""
    return {"status": "alive"}


async def _dependencies(svc: Services) -> dict[str, DependencyHealth]:
    db, storage = await asyncio.gather(asyncio.to_thread(svc.database_probe.check),
                                       asyncio.to_thread(svc.storage_probe.check))
    for name, check in (("database", db), ("storage", storage)):
        if check.ok:
            OUTAGES.recovered(name)
        else:
            OUTAGES.failed(name, check.detail or check.status)
    return {name: DependencyHealth(status=c.status, detail=c.detail, latency_ms=c.latency_ms,
                                   free_bytes=c.free_bytes)
            for name, c in (("database", db), ("storage", storage))}


@router.get("/health", response_model=Health, summary="Service, per-model and per-pool health",
            responses={503: {"model": Health, "description": "a dependency fails"}})
async def health(svc: Svc):
    """200 healthy/degraded (a configured model is not serving); 503 unhealthy (the database
    or the storage fails: readiness checks take the replica out of rotation)."""
    replicas = await asyncio.to_thread(_replica_counts)
    setup, gateway = svc.setup, svc.models
    models: dict[str, ModelHealth] = {}
    pools: dict[str, PoolHealth] = {}
    for model_id in gateway.handles:
        running, state = replicas.get(model_id, (0, "UNKNOWN"))
        status = "loaded" if running > 0 else ("unhealthy" if state == "UNHEALTHY" else "starting")
        tier = setup.model_pools[model_id]
        options = setup.pools[tier]
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
    for model_id, reason in gateway.missing.items():
        models[model_id] = ModelHealth(
            status="missing", pool=gateway.catalog[model_id]["tier"], detail=reason
        )
    healthy = all(m.status == "loaded" for m in models.values())
    dependencies = await _dependencies(svc)
    failing = any(d.status != "ok" for d in dependencies.values())
    body = Health(
        status="unhealthy" if failing else "healthy" if healthy else "degraded",
        version=VERSION, dependencies=dependencies, default_model=gateway.default_model,
        services={model_id: m.status for model_id, m in models.items()},
        models=models, pools=pools,
        features={name: reason or "available" for name, reason in setup.features.items()},
    )
    if failing:
        return JSONResponse(body.model_dump(mode="json"), status_code=503,
                            headers={"Retry-After": "5"})
    return body
