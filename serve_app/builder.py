"""Typed app builder: Serve config `args` -> one deployment per model + the HTTP ingress.

    serve run configs/local.yaml                       # import_path: serve_app.builder:build_app

Each enabled model becomes a deployment named after its id. Its Serve options come from its
tier's pool (pro, light, human: separate replica pools with their own resources, concurrency,
autoscaling and batching), overridden per model where the config says so. Models whose weights
are not on disk are not deployed; they are reported at start-up and by /health.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application

from deployments.segmentation import SegmentationModel
from pipelines.catalog import Catalog, Tier, load_catalog
from pipelines.weights import find_weights
from serve_app.ingress import Ingress
from serve_app.settings import get_settings

log = logging.getLogger("bgremove")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchOptions(_Options):
    max_batch_size: int = Field(1, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10)


class PoolOptions(_Options):
    """Serve options for the replicas of one pool (or one model)."""

    num_replicas: int | Literal["auto"] = 1
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int = Field(32, ge=1)
    max_queued_requests: int = -1
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    batch: BatchOptions = BatchOptions()
    # onnxruntime execution providers, in order of preference; unavailable ones are skipped.
    providers: list[str] = ["CPUExecutionProvider"]
    intra_op_threads: int = Field(0, ge=0)
    # Inference calls one replica runs at once (CPU: pair with intra_op_threads: 1).
    concurrent_inferences: int = Field(1, ge=1, le=64)
    # Threads for a request that has the replica to itself (0: same session as the others).
    solo_intra_op_threads: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _batch_fits(self) -> PoolOptions:
        if self.max_ongoing_requests < self.batch.max_batch_size:
            raise ValueError("max_ongoing_requests must be >= batch.max_batch_size")
        return self

    def min_replicas(self) -> int:
        if self.autoscaling_config is not None or self.num_replicas == "auto":
            return int((self.autoscaling_config or {}).get("min_replicas", 1))
        return int(self.num_replicas)

    def serve_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": self.ray_actor_options,
            "user_config": {"batch": self.batch.model_dump()},
        }
        if self.autoscaling_config is not None:
            opts["autoscaling_config"] = self.autoscaling_config
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


DEFAULT_POOLS: dict[Tier, dict[str, Any]] = {
    # Heavy models: one GPU per replica, batched half a batch window at a time.
    Tier.pro: {
        "ray_actor_options": {"num_cpus": 1, "num_gpus": 1},
        "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
        "max_ongoing_requests": 32,
    },
    Tier.light: {"ray_actor_options": {"num_cpus": 1}},
    Tier.human: {"ray_actor_options": {"num_cpus": 1}},
}


class IngressOptions(_Options):
    num_replicas: int | Literal["auto"] = 1
    autoscaling_config: dict[str, Any] | None = None
    # High on purpose: a low limit on the ingress caps the whole service's concurrency.
    max_ongoing_requests: int = Field(256, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})


class AppConfig(_Options):
    """The `args` of the Serve application (validated before anything is deployed)."""

    models: list[str] = Field(min_length=1, description="Catalog ids to deploy.")
    # Deployed when their weights are on disk, skipped quietly otherwise (not "degraded").
    optional_models: list[str] = Field(default_factory=list)
    default_model: str | None = None
    pools: dict[Tier, dict[str, Any]] = Field(default_factory=dict)
    model_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ingress: IngressOptions = IngressOptions()
    # Refuse to deploy when no node could ever host a replica (Serve would wait forever).
    # Turn off on autoscaling clusters whose nodes appear on demand.
    validate_resources: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> AppConfig:
        everything = self.models + self.optional_models
        if len(set(everything)) != len(everything):
            raise ValueError("models / optional_models: duplicate ids")
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in models")
        stray = set(self.model_overrides) - set(everything)
        if stray:
            raise ValueError(f"model_overrides for models not deployed: {sorted(stray)}")
        return self

    def pool_for(self, model_id: str, tier: Tier) -> PoolOptions:
        merged = {**DEFAULT_POOLS[tier], **self.pools.get(tier, {}), **self.model_overrides.get(model_id, {})}
        return PoolOptions.model_validate(merged)


def _requirements(ray_actor_options: dict[str, Any]) -> dict[str, float]:
    need = {"CPU": float(ray_actor_options.get("num_cpus", 1)),
            "GPU": float(ray_actor_options.get("num_gpus", 0))}
    if "memory" in ray_actor_options:
        need["memory"] = float(ray_actor_options["memory"])
    need.update({k: float(v) for k, v in (ray_actor_options.get("resources") or {}).items()})
    return {k: v for k, v in need.items() if v > 0}


def check_resources(replicas: dict[str, tuple[dict[str, Any], int]]) -> None:
    """Fail fast if a deployment's replicas can never be placed on the current cluster.

    `replicas` maps deployment name -> (ray_actor_options, minimum replica count).
    """
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    totals: dict[str, float] = {}
    for res in nodes:
        for k, v in res.items():
            totals[k] = totals.get(k, 0.0) + v
    problems = []
    wanted: dict[str, float] = {}
    for name, (actor_opts, count) in replicas.items():
        need = _requirements(actor_opts)
        if not any(all(res.get(k, 0.0) >= v for k, v in need.items()) for res in nodes):
            problems.append(f"deployment {name!r} needs {need} per replica, but no node has that")
        for k, v in need.items():
            wanted[k] = wanted.get(k, 0.0) + v * count
    for k, v in wanted.items():
        if v > totals.get(k, 0.0) + 1e-9:
            problems.append(f"minimum replicas need {k}={v:g} in total, the cluster has "
                            f"{totals.get(k, 0.0):g}")
    if problems:
        have = {k: v for k, v in totals.items() if k in ("CPU", "GPU") or not k.startswith("node:")}
        raise ValueError(
            "Requested resources cannot be satisfied: " + "; ".join(problems)
            + f". Cluster resources: {have}. Lower the pools' ray_actor_options / replicas in the "
            "Serve config, or set validate_resources: false on an autoscaling cluster."
        )


def build_app(args: AppConfig | dict[str, Any]) -> Application:
    """Serve application builder (one argument, as Serve requires): the config's `args`."""
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    settings = get_settings()
    catalog: Catalog = load_catalog(settings.catalog_path)
    unknown = [m for m in config.models + config.optional_models if m not in catalog.ids]
    if unknown:
        raise ValueError(f"models not in the catalog {settings.catalog_path}: {unknown}")

    search_dirs = settings.model_search_dirs()
    handles: dict[str, Application] = {}
    missing: dict[str, str] = {}
    placement: dict[str, tuple[dict[str, Any], int]] = {}
    for model_id in config.models + config.optional_models:
        spec = catalog.get(model_id)
        path = find_weights(spec, search_dirs)
        if path is None and model_id in config.optional_models:
            log.info("optional model %s not installed (%s); skipped", model_id, spec.weights.file)
            continue
        if path is None:
            missing[model_id] = (
                f"weights file {spec.weights.file} not found in "
                f"{', '.join(str(d) for d in search_dirs)}; run `bgremove models pull {model_id}`"
            )
            log.warning("model %s NOT deployed: %s", model_id, missing[model_id])
            continue
        pool = config.pool_for(model_id, spec.tier)
        placement[model_id] = (pool.ray_actor_options, pool.min_replicas())
        handles[model_id] = serve.deployment(SegmentationModel, name=model_id, **pool.serve_options()).bind(
            spec.model_dump(mode="json"), str(path), pool.providers, pool.intra_op_threads,
            pool.concurrent_inferences, pool.solo_intra_op_threads,
        )
        log.info("model %s: %s pool, weights %s", model_id, spec.tier.value, path)

    ingress_opts = config.ingress.model_dump(exclude_none=True)
    if "autoscaling_config" in ingress_opts:
        ingress_opts.pop("num_replicas")
    placement["Ingress"] = (config.ingress.ray_actor_options,
                            config.ingress.num_replicas if isinstance(config.ingress.num_replicas, int) else 1)
    if config.validate_resources and ray.is_initialized():
        check_resources(placement)
    if missing:
        log.warning("serving %d of %d models; missing: %s", len(handles), len(config.models),
                    ", ".join(missing))

    default = config.default_model or config.models[0]
    return serve.deployment(Ingress, name="Ingress", **ingress_opts).bind(
        handles, [m.model_dump(mode="json") for m in catalog.models], missing, default
    )
