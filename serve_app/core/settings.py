"""Process settings, read once from the environment (prefix `BGR_`).

Settings are per process (paths, limits, logging). What the application deploys (which models,
pools, resources) is the typed app config, `serve_app.config.AppConfig`, read from the Serve
YAML's `args` by `serve_app.builder.build_app`.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.catalog import DEFAULT_CATALOG
from pipelines.fetch import FetchPolicy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BGR_", extra="ignore")

    # Where `bgremove models pull` stores weights, and the first place the app looks for them.
    models_dir: Path = Path("~/.cache/bgremove/models")
    # One extra read-only folder searched for weights files (e.g. a shared volume, or
    # ../shared/models on the development machine). Relative paths are resolved against the
    # directory the app is started from.
    extra_models_dir: Path | None = None
    catalog_path: Path = DEFAULT_CATALOG
    # A bucket (s3://bucket/prefix, or file:///path) holding verified weights published with
    # `bgremove models pull IDS --to URL`: each node fills `models_dir` from it (checksums
    # checked against the catalog), so nodes need no shared models volume.
    models_url: str | None = None

    max_upload_bytes: int = Field(32 * 1024 * 1024, gt=0)
    regular_max_pixels: int = Field(2048 * 2048, gt=0)
    # The service's own log records (logger ray.serve.bgremove) below this level are dropped;
    # Serve's and Ray's own logs follow the Serve config's logging_config.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Compositing/encoding jobs one ingress replica runs at once (0: one per CPU core). Bounds
    # its CPU and memory under load: each can peak at ~90 bytes per pixel.
    composite_concurrency: int = Field(0, ge=0)

    # Embedded defaults for one machine: SQLite and result files under `data_dir`. On a cluster,
    # point `database_url` at PostgreSQL (postgresql+psycopg://...) and `data_dir` at shared storage.
    data_dir: Path = Path("~/.local/share/bgremove")
    database_url: str | None = None

    # Shotgun API (spec 003): inputs up to 50 MB, fetched `image_url`s under the same limits.
    shotgun_max_bytes: int = Field(50 * 1024 * 1024, gt=0)
    shotgun_max_pixels: int = Field(25_000_000, gt=0)  # decoded input, like remove.bg's 25 MP
    upscale_max_output_pixels: int = Field(8192 * 8192, gt=0)
    process_max_output_pixels: int = Field(2 * 8192 * 8192, gt=0)  # all of one /process reply
    # How long result links (`image_url` in shotgun rows) stay downloadable; 0 disables links.
    result_ttl_s: int = Field(3600, ge=0)
    # Absolute base for result links (e.g. https://bg.example.com); default: the request's own.
    public_base_url: str | None = None
    url_fetch_timeout_s: float = Field(10.0, gt=0)
    url_fetch_max_redirects: int = Field(3, ge=0, le=10)
    # Async jobs (HD images, /v1/jobs): per worker replica at most `job_concurrency` at once;
    # a worker renews its lease every lease/3 s; a job whose worker vanished is resumed up to
    # `job_max_attempts` times, then failed with the reason.
    job_concurrency: int = Field(2, ge=1, le=64)
    job_lease_s: float = Field(30.0, gt=0)
    job_max_attempts: int = Field(3, ge=1, le=20)
    job_poll_s: float = Field(1.0, gt=0)
    # /health reports the artifact storage as full (and the service unready) below this.
    min_free_storage_bytes: int = Field(100 * 1024 * 1024, ge=0)
    job_output_ttl_s: int = Field(24 * 3600, gt=0)  # outputs are deleted after download or this
    hd_max_pixels: int = Field(100_000_000, gt=0)
    # Video (spec 000): longer clips are trimmed to this many seconds (with a warning).
    video_max_duration_s: float = Field(4.0, gt=0)
    # /v1/jobs video jobs: at most this many seconds of a clip are processed (and charged);
    # before processing, the worker refuses a clip whose processed length the balance cannot pay.
    job_video_max_duration_s: float = Field(300.0, gt=0)
    # Video frames (the clip's, or a composition canvas) of at most this many pixels (4K UHD):
    # each frame in flight and in the encoder's queue is held whole in memory.
    video_max_pixels: int = Field(3840 * 2160, gt=0)
    video_window: int = Field(16, ge=1, le=256)  # frames in flight to the model deployments
    video_smoothing: bool = True  # temporal mask smoothing (pipelines/temporal.py)
    # A recurrent model (RVM) takes a clip in chunks of this many frames, each led by
    # `video_chunk_warmup` frames of the one before (pipelines/rvm.py; bench/bench_video_quality.py)
    video_chunk_frames: int = Field(24, ge=1, le=1000)
    video_chunk_warmup: int = Field(2, ge=0, le=100)  # chosen on the tuning half
    video_edge_decontamination: bool = False  # Blur-Fusion per frame (slower, cleaner edges)
    hd_max_upload_bytes: int = Field(200 * 1024 * 1024, gt=0)
    # CIDRs that image_url may reach although they are private/loopback/link-local (default: none).
    url_allowed_networks: list[str] = Field(default_factory=list)
    # Where job inputs/outputs live (serve_app.core.artifacts): unset -> <data_dir>/artifacts;
    # file:///abs/path -> that folder (shared storage when several nodes serve);
    # s3://bucket/prefix -> an S3-compatible bucket (nodes then share no folder). Credentials
    # come from boto3's chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a pod's service account
    # (IRSA), an instance profile. Never put them in this config.
    artifacts_url: str | None = None
    s3_endpoint_url: str | None = None  # e.g. http://minio.storage:9000; unset: AWS S3
    s3_region: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"  # path: MinIO, SeaweedFS
    # The endpoint download links are signed for, when clients reach the bucket at another
    # address than the service does (an in-cluster endpoint vs. a public one).
    s3_presign_endpoint_url: str | None = None
    # /v1/jobs `output_url`: a presigned bucket link (valid until the output expires, at most
    # 7 days) so downloads skip the service; false keeps links to /api/download (a bucket that
    # clients cannot reach).
    s3_presigned_downloads: bool = True
    # Public base URL at which that store's files can be read (a web server or CDN in front of
    # the folder or bucket). When set, GET /video/result answers with this JSON `upload_link`
    # (spec 000) instead of streaming the file; outputs then live for `job_output_ttl_s`.
    artifacts_public_url: str | None = None
    # Streamed video/image uploads (POST /api/upload, spec 002: 400 "File too large" above).
    upload_max_bytes: int = Field(500 * 1024 * 1024, gt=0)

    # API keys (X-Api-Key) on every route but /health, the docs and result links. Turning
    # auth off is for a single user on one machine: the service warns loudly at start-up.
    auth_enabled: bool = True
    # With auth off the service answers only clients on its own machine (loopback): anyone
    # else gets 401. True opens it to every client that reaches the port, unmetered and
    # unauthenticated: an explicit choice, never a default (docs/operations.md).
    open_without_keys: bool = False
    auth_cache_s: float = Field(5.0, ge=0)  # a revoked key stops working within this
    # Backpressure: requests one ingress replica works on at once (0: no limit); more are
    # answered at once with 503 and Retry-After instead of queueing (/health is exempt).
    max_inflight_requests: int = Field(64, ge=0)
    # Admission: a synchronous image request whose models have more than this many seconds of
    # work queued is answered 503 with Retry-After at once, before decoding (0: no limit;
    # serve_app/core/admission.py). The async APIs queue by design.
    max_queue_wait_s: float = Field(30.0, ge=0)
    # Per-key defaults (a key may carry its own): requests per minute, jobs in progress at once.
    rate_limit_per_min: int = Field(60, ge=1)
    max_concurrent_jobs: int = Field(4, ge=1)
    # Credits per operation, charged to the key only on success; a request the balance cannot
    # cover is refused (402 insufficient_credits) before any work starts.
    price_image: float = Field(1.0, ge=0)  # /image/*/v1, /upscale, an HD or /v1/jobs image
    price_shotgun_model: float = Field(1.0, ge=0)  # per model row in /remove-background, /process
    price_video_second: float = Field(1.0, ge=0)  # per processed second of video
    price_backdrop: float = Field(1.0, ge=0)  # /image/backdrop/v1
    price_generate: float = Field(10.0, ge=0)  # /image/generate/v1 (a diffusion run)

    def fetch_policy(self, max_bytes: int) -> FetchPolicy:
        """The rules for fetching a URL (image_url, bg_image_url, a job's input) or posting
        to one (webhooks): this many bytes at most, the timeout, redirects and allowed
        networks of these settings."""
        return FetchPolicy.from_strings(max_bytes, self.url_fetch_timeout_s,
                                        self.url_fetch_max_redirects, self.url_allowed_networks)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir.expanduser().resolve() / 'bgremove.db'}"

    def model_search_dirs(self) -> list[Path]:
        dirs = [self.models_dir.expanduser().resolve()]
        if self.extra_models_dir is not None:
            dirs.append(self.extra_models_dir.expanduser().resolve())
        return dirs


def apply_log_level(settings: Settings) -> None:
    """BGR_LOG_LEVEL on this process's service logger (each replica calls it at start)."""
    logging.getLogger("ray.serve.bgremove").setLevel(settings.log_level)


@lru_cache
def get_settings() -> Settings:
    return Settings()
