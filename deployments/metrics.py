"""The service's own Prometheus metrics, through Ray Serve's metrics API.

Every Ray node's metrics agent exports them (names get Ray's `ray_` prefix) together with
Serve's built-in `ray_serve_*` metrics (requests, latencies, queued and ongoing requests per
deployment), and Serve adds `application`, `deployment` and `replica` tags to each. The list
and the queries for p50/p95 per model and resolution are in docs/operations.md.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

# Input sizes a latency is filed under: megapixels, upper bounds.
RESOLUTION_BUCKETS = ((0.3, "<=0.3MP"), (1.0, "<=1MP"), (4.0, "<=4MP"), (12.0, "<=12MP"))


def resolution_bucket(width: int, height: int) -> str:
    mp = width * height / 1e6
    return next((name for bound, name in RESOLUTION_BUCKETS if mp <= bound), ">12MP")


MODEL_INFERENCE_SECONDS = Histogram(
    "bgremove_model_inference_seconds",
    description="Time one image spent in its model's inference call (pre/postprocessing "
                "included; a batch's images each see the whole batch's time).",
    boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    tag_keys=("model", "pool", "resolution"),
)
MODEL_BATCH_SIZE = Histogram(
    "bgremove_model_batch_size",
    description="Images per inference call.",
    boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
    tag_keys=("model",),
)
MODEL_IN_FLIGHT = Gauge(
    "bgremove_model_in_flight",
    description="Images a model replica holds: running or waiting for a batch or a slot.",
    tag_keys=("model",),
)
JOBS = Gauge(
    "bgremove_jobs",
    description="Async jobs in the database by state and kind (every worker replica reports "
                "the same totals: aggregate with max).",
    tag_keys=("state", "kind"),
)
ERRORS = Counter(
    "bgremove_errors_total",
    description="Error responses by error code, HTTP status and route family.",
    tag_keys=("code", "status", "family"),
)
CREDITS_CHARGED = Counter(
    "bgremove_credits_charged_total",
    description="Credits charged to API keys, by operation.",
    tag_keys=("operation",),
)

DEPENDENCY_ERRORS = Counter(
    "bgremove_dependency_errors_total",
    description="Requests answered 503/507 because a dependency failed (database, storage).",
    tag_keys=("dependency",),
)
