"""The typed application config: the `args` of the Serve app in configs/*.yaml.

`AppConfig` is validated before anything is deployed. Pools are per tier (pro, light, human);
each model deployment gets its tier's pool options merged with its own overrides.
`IngressSetup` is what the builder hands the ingress: the resolved pools and shotgun options.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.auto import AUTO, ServedModel
from pipelines.catalog import Tier


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
    # fp16 runs a half-precision copy of the graph; int8 the verified int8 build (CPU); auto =
    # fp16 on a GPU provider, on CPU int8 where the model has a build that passed its quality
    # gate (`bgremove models quantize`), else fp32.
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    # false: no CPU memory arena kept between runs (idle memory of a 1024² model ~2 GB ->
    # ~0.4 GB, each run ~35 % slower on CPU; docs/configuration.md).
    cpu_memory_arena: bool = True
    # Run each model of the pool with this longer input side instead of its catalog size
    # (e.g. IS-Net at 768 instead of 1024: ~1.8x faster on CPU, a little less exact;
    # docs/benchmarks.md "Input size against quality"). None: the catalog's size.
    input_size: int | None = Field(None, ge=32, le=4096)

    @model_validator(mode="after")
    def _batch_fits(self) -> PoolOptions:
        if self.max_ongoing_requests < self.batch.max_batch_size:
            raise ValueError("max_ongoing_requests must be >= batch.max_batch_size")
        if self.input_size is not None and self.precision == "int8":
            raise ValueError("input_size runs float graphs only: precision fp32, fp16 or auto")
        return self

    def min_replicas(self) -> int:
        if self.autoscaling_config is not None or self.num_replicas == "auto":
            return int((self.autoscaling_config or {}).get("min_replicas", 1))
        return int(self.num_replicas)

    def slots(self) -> int:
        """Calls a model of this pool runs at once, at the most replicas it may have (what
        admission measures queues against): replicas x `concurrent_inferences`, or the
        replicas alone when the pool batches (a batched call reports its share of the batch)."""
        if self.autoscaling_config is not None or self.num_replicas == "auto":
            replicas = int((self.autoscaling_config or {}).get("max_replicas",
                                                                self.min_replicas()))
        else:
            replicas = int(self.num_replicas)
        per_replica = 1 if self.batch.max_batch_size > 1 else self.concurrent_inferences
        return max(1, replicas * per_replica)

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments of `SegmentationModel` (how a replica runs its model)."""
        return self.model_dump(include={"providers", "intra_op_threads", "concurrent_inferences",
                                        "solo_intra_op_threads", "precision",
                                        "cpu_memory_arena", "input_size"})

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
    # Requests Serve's proxy holds for the ingress beyond that (then it answers 503 itself);
    # the app sheds load earlier, with Retry-After (BGR_MAX_INFLIGHT_REQUESTS).
    max_queued_requests: int = Field(1024, ge=-1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})


class ShotgunOptions(_Options):
    """`POST /remove-background` and `/process` (spec 003)."""

    # What `include_models: ["all"]` means; default: every model this app serves.
    models: list[str] | None = None
    # A model slower than this is reported as an error in its row; the others are unaffected.
    model_timeout_s: float = Field(30.0, gt=0, le=600)


class AutoOptions(_Options):
    """`model=auto` (pipelines.auto)."""

    # For an object photo run the pro and the light model side by side and keep the more
    # confident mask (a lower SAD than either alone on the quality benchmark, for the light
    # model's time: u2netp adds ~0.3 s of CPU per image to IS-Net's ~2 s on 2 cores).
    # false: the pro model alone.
    compare: bool = True


class WorkerOptions(_Options):
    """The job worker deployment (async HD images and /v1/jobs)."""

    num_replicas: int = Field(1, ge=0)  # 0: no worker, the async APIs are off
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    # Scale the workers by queue depth (deployments/autoscaling.py): Serve's autoscaling_config
    # (min_replicas, max_replicas, upscale_delay_s, downscale_delay_s, ...) with the queue-depth
    # policy filled in; replaces num_replicas.
    autoscaling_config: dict[str, Any] | None = None
    # Model for each /v1/jobs tier; default: `original` = the default model, and for pro,
    # light, human the first served model of that tier.
    tier_models: dict[Literal["original", "pro", "light", "human"], str] = Field(
        default_factory=dict)
    # How long the worker waits for one model call (an image, a video frame) before the job
    # fails; HD images on a busy CPU pool can take minutes.
    model_timeout_s: float = Field(600.0, gt=0)


class PromptOptions(_Options):
    """The click/box prompt model (`bgremove models pull mobilesam`): deployed when its two
    files are installed and `enabled`; without it, requests with points or a box get a 503."""

    enabled: bool = True
    num_replicas: int = Field(1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = Field(0, ge=0)
    cache_size: int = Field(32, ge=1, le=4096)  # image embeddings kept per replica (4 MB each)
    max_ongoing_requests: int = Field(16, ge=1)


class DetectorOptions(_Options):
    """The subject detector behind `model=auto` (`bgremove models pull detector`): deployed
    when its file is installed and `enabled`; without it auto falls back to the face cue."""

    enabled: bool = True
    num_replicas: int = Field(1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0})
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = Field(1, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)


class TextPromptOptions(_Options):
    """`text_prompt` on /v1/jobs: a CLIPSeg checkpoint in a local folder (save_pretrained
    layout; never fetched from the hub at run time). Unset `model_dir`: prompts are refused."""

    model_dir: str | None = None
    device: str = "cpu"  # "cuda" on a GPU pool
    threads: int = Field(0, ge=0)
    threshold: float = Field(0.4, gt=0, lt=1)
    num_replicas: int = Field(1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})


class GeneratorOptions(_Options):
    """`/image/generate/v1`: a diffusers inpainting pipeline in a local folder (save_pretrained
    layout; never fetched at run time). Unset `model_dir`: the endpoint answers 503."""

    model_dir: str | None = None
    device: str = "cpu"  # "cuda" in the GPU pool
    dtype: Literal["auto", "fp16", "fp32"] = "auto"
    num_replicas: int = Field(1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    max_ongoing_requests: int = Field(4, ge=1)


class AppConfig(_Options):
    """The `args` of the Serve application (validated before anything is deployed)."""

    models: list[str] = Field(min_length=1, description="Catalog ids to deploy.")
    # Deployed when their weights are on disk, skipped quietly otherwise (not "degraded").
    optional_models: list[str] = Field(default_factory=list)
    default_model: str | None = None
    pools: dict[Tier, dict[str, Any]] = Field(default_factory=dict)
    model_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ingress: IngressOptions = IngressOptions()
    shotgun: ShotgunOptions = ShotgunOptions()
    jobs: WorkerOptions = WorkerOptions()
    auto: AutoOptions = AutoOptions()
    prompt: PromptOptions = PromptOptions()
    detector: DetectorOptions = DetectorOptions()
    text_prompt: TextPromptOptions = TextPromptOptions()
    generate: GeneratorOptions = GeneratorOptions()
    # Licences (as the catalog spells them, e.g. "AGPL-3.0") the operator accepts for models
    # whose weights are copyleft or non-commercial; such a model is never served otherwise.
    accept_licenses: list[str] = Field(default_factory=list)
    # Refuse to deploy when no node could ever host a replica (Serve would wait forever).
    # Turn off on autoscaling clusters whose nodes appear on demand.
    validate_resources: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> AppConfig:
        everything = self.models + self.optional_models
        if len(set(everything)) != len(everything):
            raise ValueError("models / optional_models: duplicate ids")
        if self.default_model not in (None, AUTO, *self.models):
            raise ValueError(f"default_model {self.default_model!r} is neither 'auto' nor in "
                             "models")
        stray = set(self.model_overrides) - set(everything)
        if stray:
            raise ValueError(f"model_overrides for models not deployed: {sorted(stray)}")
        stray = set(self.shotgun.models or ()) - set(everything)
        if stray:
            raise ValueError(f"shotgun.models not deployed: {sorted(stray)}")
        return self

    def tier_pool(self, tier: Tier) -> PoolOptions:
        return PoolOptions.model_validate({**DEFAULT_POOLS[tier], **self.pools.get(tier, {})})

    def pool_for(self, model_id: str, tier: Tier) -> PoolOptions:
        merged = {**DEFAULT_POOLS[tier], **self.pools.get(tier, {}), **self.model_overrides.get(model_id, {})}
        return PoolOptions.model_validate(merged)


class IngressSetup(_Options):
    """Everything the ingress needs besides the handles and the catalog (built by the builder)."""

    default_model: str
    shotgun: ShotgunOptions = ShotgunOptions()
    tier_models: dict[str, str] = Field(default_factory=dict)  # /v1/jobs model tier -> model id
    # pool (tier) of each served model, and each pool's options (before per-model overrides)
    model_pools: dict[str, Tier] = Field(default_factory=dict)
    pools: dict[Tier, PoolOptions] = Field(default_factory=dict)
    # Optional features (prompts, generate): None when available, else why not (for /health).
    features: dict[str, str | None] = Field(default_factory=dict)
    # Installed models not served because their licence was not accepted, and why.
    withheld: dict[str, str] = Field(default_factory=dict)
    # The served models in the config's order, what `model=auto` chooses from.
    auto_models: list[ServedModel] = Field(default_factory=list)
    auto: AutoOptions = AutoOptions()
    # calls each served model runs at once (replicas x concurrent_inferences): admission
    model_slots: dict[str, int] = Field(default_factory=dict)
