"""Typed app builder: Serve config `args` -> one deployment per model + the HTTP ingress.

    serve run configs/local.yaml                       # import_path: serve_app.builder:build_app

Each enabled model becomes a deployment named after its id. Its Serve options come from its
tier's pool (pro, light, human: separate replica pools with their own resources, concurrency,
autoscaling and batching), overridden per model where the config says so. Models whose weights
are not on disk are not deployed; they are reported at start-up and by /health.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from deployments.autoscaling import POLICY as JOB_QUEUE_POLICY
from deployments.detector import SubjectDetection
from deployments.generator import BackgroundGenerator
from deployments.job_runner import JobWorker
from deployments.prompter import PromptModel
from deployments.segmentation import SegmentationModel
from deployments.textseg import TextSegmentation
from pipelines.auto import ServedModel
from pipelines.catalog import Catalog, ModelSpec, load_catalog
from pipelines.input_size import resized
from pipelines.weights import find_int8, find_weights
from serve_app.config import (  # noqa: F401 - re-exported: the config types live in serve_app.config
    DEFAULT_POOLS,
    AppConfig,
    IngressSetup,
    PoolOptions,
)
from serve_app.core.model_bucket import ModelBucket, fill_cache
from serve_app.core.settings import Settings, get_settings
from serve_app.ingress import Ingress

log = logging.getLogger("ray.serve.bgremove")


def _requirements(ray_actor_options: dict[str, Any]) -> dict[str, float]:
    need = {"CPU": float(ray_actor_options.get("num_cpus", 1)),
            "GPU": float(ray_actor_options.get("num_gpus", 0))}
    if "memory" in ray_actor_options:
        need["memory"] = float(ray_actor_options["memory"])
    need.update({k: float(v) for k, v in (ray_actor_options.get("resources") or {}).items()})
    return {k: v for k, v in need.items() if v > 0}


def _label_matches(value: str | None, rule: str) -> bool:
    """One Ray label-selector rule: "v", "!v", "in(a,b)" or "!in(a,b)"."""
    negate = rule.startswith("!")
    rule = rule.removeprefix("!")
    if rule.startswith("in(") and rule.endswith(")"):
        hit = value in {v.strip() for v in rule[3:-1].split(",")}
    else:
        hit = value == rule
    return hit != negate


def _node_fits(node: dict[str, Any], need: dict[str, float], labels: dict[str, str]) -> bool:
    res, node_labels = node["Resources"], node.get("Labels") or {}
    return (all(res.get(k, 0.0) >= v for k, v in need.items())
            and all(_label_matches(node_labels.get(k), rule) for k, rule in labels.items()))


def check_resources(replicas: dict[str, tuple[dict[str, Any], int]]) -> None:
    """Fail fast if a deployment's replicas can never be placed on the current cluster.

    `replicas` maps deployment name -> (ray_actor_options, minimum replica count). Resources
    (CPU, GPU, memory, custom) and `label_selector` are checked against the live nodes.
    """
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    totals: dict[str, float] = {}
    for node in nodes:
        for k, v in node["Resources"].items():
            totals[k] = totals.get(k, 0.0) + v
    problems = []
    wanted: dict[str, float] = {}
    for name, (actor_opts, count) in replicas.items():
        need = _requirements(actor_opts)
        labels = actor_opts.get("label_selector") or {}
        if not any(_node_fits(node, need, labels) for node in nodes):
            where = f" on a node labelled {labels}" if labels else ""
            problems.append(f"deployment {name!r} needs {need} per replica{where}, "
                            "but no node has that")
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


LICENSE_DUTIES = {
    "copyleft": "whoever you give the weights or a program built on them must get its complete "
                "source, your changes included; under AGPL-3.0 also whoever uses this service "
                "over a network (section 13)",
    "non-commercial": "the weights may not be used for commercial purposes",
}


def license_refusal(spec: ModelSpec, accepted: list[str]) -> str | None:
    """Why a model may not be served under the operator's accepted licences; None if it may.
    Permissive weights always may; copyleft and non-commercial ones only when accepted."""
    terms = spec.weights.license_terms
    if terms == "permissive" or spec.weights.license in accepted:
        return None
    return (f"its weights are {spec.weights.license} ({terms}: {LICENSE_DUTIES[terms]}); add "
            f"'{spec.weights.license}' to accept_licenses in the Serve config to serve it")


def build_app(args: AppConfig | dict[str, Any]) -> Application:
    """Serve application builder (one argument, as Serve requires): the config's `args`."""
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    settings = get_settings()
    catalog: Catalog = load_catalog(settings.catalog_path)
    unknown = [m for m in config.models + config.optional_models if m not in catalog.ids]
    if unknown:
        raise ValueError(f"models not in the catalog {settings.catalog_path}: {unknown}")

    search_dirs = settings.model_search_dirs()
    _fill_from_bucket(config, catalog, settings)
    handles: dict[str, Application] = {}
    missing: dict[str, str] = {}
    placement: dict[str, tuple[dict[str, Any], int]] = {}
    model_pools: dict[str, Any] = {}
    served: dict[str, ModelSpec] = {}  # the served models' specs, at their pool's input_size
    model_slots: dict[str, int] = {}
    withheld: dict[str, str] = {}
    for model_id in config.models + config.optional_models:
        spec = catalog.get(model_id)
        path = find_weights(spec, search_dirs)
        if path is None and model_id in config.optional_models:
            log.info("optional model %s not installed (%s); skipped", model_id, spec.weights.file)
            continue
        refusal = license_refusal(spec, config.accept_licenses)
        if refusal is not None:  # a required model makes /health degraded; an optional not
            (missing if model_id in config.models else withheld)[model_id] = refusal
            log.warning("model %s NOT served: %s", model_id, refusal)
            continue
        if path is None:
            # no folder in what clients see (/health is public); the log names them
            missing[model_id] = (f"weights file {spec.weights.file} not installed; run "
                                 f"`bgremove models pull {model_id}`")
            log.warning("model %s NOT deployed: %s (searched %s)", model_id, missing[model_id],
                        ", ".join(str(d) for d in search_dirs))
            continue
        pool = config.pool_for(model_id, spec.tier)
        # callers resize images to the size the replica runs the model at
        served[model_id] = resized(spec, pool.input_size)
        placement[model_id] = (pool.ray_actor_options, pool.min_replicas())
        model_pools[model_id] = spec.tier
        model_slots[model_id] = pool.slots()
        int8 = find_int8(spec, search_dirs)
        handles[model_id] = serve.deployment(SegmentationModel, name=model_id, **pool.serve_options()).bind(
            spec.model_dump(mode="json"), str(path), **pool.backend_options(),
            int8_path=str(int8) if int8 else None)
        log.info("model %s: %s pool, weights %s%s", model_id, spec.tier.value, path,
                 f", verified int8 build {int8}" if int8 else "")
        if spec.weights.license_terms != "permissive":
            log.warning("model %s is served under %s (%s), accepted in the Serve config "
                        "(accept_licenses): %s", model_id, spec.weights.license,
                        spec.weights.license_terms, LICENSE_DUTIES[spec.weights.license_terms])

    ingress_opts = config.ingress.model_dump(exclude_none=True)
    if "autoscaling_config" in ingress_opts:
        ingress_opts.pop("num_replicas")
    if config.jobs.num_replicas > 0:
        placement["JobWorker"] = (config.jobs.ray_actor_options, config.jobs.num_replicas)
    ingress_replicas = config.ingress.num_replicas
    placement["Ingress"] = (config.ingress.ray_actor_options,
                            ingress_replicas if isinstance(ingress_replicas, int) else 1)
    if config.validate_resources and ray.is_initialized():
        check_resources(placement)
    if missing:
        log.warning("serving %d of %d models; missing: %s", len(handles), len(config.models),
                    ", ".join(missing))

    prompter, prompt_reason = _prompt_model(config, catalog, search_dirs, placement)
    detector, detector_reason = _detector(config, catalog, search_dirs, placement)
    text_model, text_reason = _text_model(config, placement)
    generator, generate_reason = _generator(config, placement)

    default = config.default_model or config.models[0]
    auto_models = [ServedModel(m, catalog.get(m).tier, catalog.get(m).preprocess.width
                               / catalog.get(m).preprocess.height, catalog.get(m).recurrent)
                   for m in handles]
    tier_models = {"original": default}
    for model_id, tier in model_pools.items():
        tier_models.setdefault(tier.value, model_id)
    tier_models |= config.jobs.tier_models
    setup = IngressSetup(default_model=default, shotgun=config.shotgun, model_pools=model_pools,
                         pools={tier: config.tier_pool(tier) for tier in set(model_pools.values())},
                         tier_models=tier_models, features={"prompts": prompt_reason,
                                                            "detector": detector_reason,
                                                            "text_prompt": text_reason,
                                                            "generate": generate_reason},
                         withheld=withheld, auto_models=auto_models, auto=config.auto,
                         model_slots=model_slots)
    worker = None
    if config.jobs.num_replicas > 0:
        scaling: dict[str, Any] = {"num_replicas": config.jobs.num_replicas}
        if config.jobs.autoscaling_config is not None:  # by queue depth, not requests
            scaling = {"autoscaling_config": {"policy": {"policy_function": JOB_QUEUE_POLICY},
                                              **config.jobs.autoscaling_config}}
        worker = serve.deployment(
            JobWorker, name="JobWorker", **scaling,
            ray_actor_options=config.jobs.ray_actor_options, max_ongoing_requests=64,
        ).bind(handles, model_timeout_s=config.jobs.model_timeout_s, prompter=prompter,
               text_segmenter=text_model, detector=detector, auto_models=auto_models,
               auto_compare=config.auto.compare,
               specs={m: served[m].model_dump(mode="json") for m in handles})
    return serve.deployment(Ingress, name="Ingress", **ingress_opts).bind(
        handles, [served.get(m.id, m).model_dump(mode="json") for m in catalog.models], missing,
        setup.model_dump(mode="json"), worker, prompter, generator, detector,
    )


def _fill_from_bucket(config: AppConfig, catalog: Catalog, settings: Settings) -> None:
    """With `models_url`: fetch into `models_dir` what it lacks of the configured models and
    assets (checksums checked), so the lookups below find them on this node; replicas on other
    nodes load their own copy, fetched at start (`model_bucket.local_weights`)."""
    bucket = ModelBucket.from_settings(settings)
    if bucket is None:
        return
    specs: list[Any] = [catalog.get(m) for m in config.models + config.optional_models]
    if config.detector.enabled:
        specs += catalog.asset_group("detector")
    if config.prompt.enabled:
        specs += catalog.asset_group("mobilesam")
    for model_id, problem in fill_cache(bucket, specs, settings.models_dir.expanduser()).items():
        log.info("models bucket: %s (%s)", model_id, problem)


def _generator(config: AppConfig, placement: dict) -> tuple[Application | None, str | None]:
    """The AI background generator's deployment when configured, else (None, why not)."""
    options = config.generate
    return _checkpoint_deployment(
        BackgroundGenerator, "generate", options, "diffusers inpainting pipeline folder",
        "model_index.json", "diffusers", placement, options.max_ongoing_requests,
        device=options.device, dtype=options.dtype)


def _text_model(config: AppConfig, placement: dict) -> tuple[Application | None, str | None]:
    """The text_prompt backend's deployment when configured, else (None, why not)."""
    options = config.text_prompt
    return _checkpoint_deployment(
        TextSegmentation, "text_prompt", options, "CLIPSeg checkpoint folder", "config.json",
        "transformers", placement, 8, device=options.device, threads=options.threads,
        threshold=options.threshold)


def _checkpoint_deployment(cls: type, field: str, options: Any, what: str, marker: str,
                           package: str, placement: dict, max_ongoing: int,
                           **bind: Any) -> tuple[Application | None, str | None]:
    """A deployment of `cls` over the checkpoint folder `options.model_dir` (one with `marker`
    in it, read by `package`), or (None, why not) for /health."""
    if options.model_dir is None:
        return None, (f"not configured (set {field}.model_dir in the Serve config to a {what}; "
                      "docs/prompts-and-generation.md)")
    folder = Path(options.model_dir).expanduser()
    if importlib.util.find_spec(package) is None:
        return None, f"not installed (the `ai` extra: torch, {package})"
    if not (folder / marker).is_file():
        log.warning("%s.model_dir %s has no %s; %s off", field, folder, marker, field)
        return None, f"not installed (its model_dir has no {marker})"  # no paths: /health is public
    placement[cls.__name__] = (options.ray_actor_options, options.num_replicas)
    return serve.deployment(
        cls, name=cls.__name__, num_replicas=options.num_replicas,
        ray_actor_options=options.ray_actor_options, max_ongoing_requests=max_ongoing,
    ).bind(str(folder), **bind), None


def _detector(config: AppConfig, catalog: Catalog, search_dirs: list[Path],
              placement: dict) -> tuple[Application | None, str | None]:
    """The subject detector's deployment when enabled and installed, else (None, why not)."""
    options = config.detector
    if not options.enabled:
        return None, "disabled in the Serve config (detector.enabled: false)"
    assets = catalog.asset_group("detector")
    path = find_weights(assets[0], search_dirs) if assets else None
    if path is None:
        log.info("subject detector not installed; model=auto falls back to the face cue")
        return None, "not installed: run `bgremove models pull detector`"
    placement["SubjectDetection"] = (options.ray_actor_options, options.num_replicas)
    log.info("subject detector: %s", path)
    return serve.deployment(
        SubjectDetection, name="SubjectDetection", num_replicas=options.num_replicas,
        ray_actor_options=options.ray_actor_options,
        max_ongoing_requests=options.max_ongoing_requests,
    ).bind(str(path), providers=options.providers,
           intra_op_threads=options.intra_op_threads), None


def _prompt_model(config: AppConfig, catalog: Catalog, search_dirs: list[Path],
                  placement: dict) -> tuple[Application | None, str | None]:
    """The prompt model's deployment when enabled and installed, else (None, why not)."""
    options = config.prompt
    if not options.enabled:
        return None, "disabled in the Serve config (prompt.enabled: false)"
    files = {a.id: find_weights(a, search_dirs) for a in catalog.asset_group("mobilesam")}
    if not files or None in files.values():
        absent = [a.weights.file for a in catalog.asset_group("mobilesam")
                  if files.get(a.id) is None] or ["(no mobilesam assets in the catalog)"]
        log.info("prompt model not installed (%s); click/box prompts off", ", ".join(absent))
        return None, (f"not installed ({', '.join(absent)} missing): run "
                      "`bgremove models pull mobilesam`")
    placement["PromptModel"] = (options.ray_actor_options, options.num_replicas)
    app = serve.deployment(
        PromptModel, name="PromptModel", num_replicas=options.num_replicas,
        ray_actor_options=options.ray_actor_options,
        max_ongoing_requests=options.max_ongoing_requests,
    ).bind(str(files["mobilesam-encoder"]), str(files["mobilesam-decoder"]),
           providers=options.providers, intra_op_threads=options.intra_op_threads,
           cache_size=options.cache_size)
    log.info("prompt model: %s", ", ".join(str(p) for p in files.values()))
    return app, None
