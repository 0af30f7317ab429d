"""The real Ray Serve app for integration tests: one Ray cluster and one app per test session.

Fixtures `base_url` and `client` are re-exported by conftest.py; test modules that use them run
against the same application (`APP`), built by the real builder from the tiny test catalog.
"""

from __future__ import annotations

import os
import socket
import threading

import httpx
import pytest

from conftest import make_tiny_clipseg, make_tiny_inpainter, mobilesam_dir, pulled_models_dir, tiny_catalog

APP = "bgremove"
UPLOAD_LIMIT = 2 * 1024 * 1024
SHOTGUN_LIMIT = 1024 * 1024
TEXT_THRESHOLD = 0.45


# Three pools with different options; the pro pool is pinned to nodes that offer the custom
# resource `pro_pool` (on a cluster: the GPU worker group), as a KubeRay config would do. The
# pro pool runs the GPU backend's half-precision graph, here on the CPU provider (its twin).
POOLS = {
    "pro": {"ray_actor_options": {"num_cpus": 0.25, "resources": {"pro_pool": 1}},
            "providers": ["CPUExecutionProvider"], "precision": "fp16", "max_ongoing_requests": 16,
            "batch": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}},
    "light": {"ray_actor_options": {"num_cpus": 0.25}},
    "human": {"ray_actor_options": {"num_cpus": 0.25}, "intra_op_threads": 1,
              "concurrent_inferences": 2, "max_ongoing_requests": 24,
              "autoscaling_config": {"min_replicas": 1, "max_replicas": 2,
                                     "target_ongoing_requests": 8}},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_with_deadline(fn, seconds: float):
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(result=fn()), daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise TimeoutError(f"Serve app did not become ready within {seconds:.0f}s")
    return box.get("result")


@pytest.fixture(scope="session")
def base_url(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("serve")
    env = {
        "BGR_MODELS_DIR": str(tiny_model.parent),
        "BGR_CATALOG_PATH": str(tiny_catalog(tmp)),
        "BGR_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "BGR_DATA_DIR": str(tmp / "data"),
        "BGR_SHOTGUN_MAX_BYTES": str(SHOTGUN_LIMIT),
        "BGR_UPSCALE_MAX_OUTPUT_PIXELS": str(2048 * 2048),
        "BGR_URL_ALLOWED_NETWORKS": '["127.0.0.1/32"]',  # the tests' own image server
        "BGR_JOB_POLL_S": "0.2",
        "BGR_JOB_LEASE_S": "2",  # a lost worker's job is resumed within seconds
        "BGR_AUTH_CACHE_S": "0.5",  # revocation tests wait this long
        "RAY_AUTH_MODE": "disabled",
    }
    real = pulled_models_dir()  # the registry-served models, pulled once per machine
    if real is not None:
        env["BGR_EXTRA_MODELS_DIR"] = str(real)
        pulled_models_dir(ids=(), groups=("detector",))  # auto's subject detector, beside them
    clipseg = make_tiny_clipseg(tmp / "clipseg")  # random weights: wiring, not quality
    inpainter = make_tiny_inpainter(tmp / "inpainter")
    sam = mobilesam_dir()  # the real click/box prompt model, when it can be had
    if sam is not None:
        for name in ("mobilesam_encoder.onnx", "mobilesam_decoder.onnx"):
            (tiny_model.parent / name).symlink_to(sam / name)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import ray
    from ray import serve

    from serve_app.builder import build_app
    from serve_app.core.settings import get_settings

    get_settings.cache_clear()
    # The app runs with API keys on, as in production; the tests' own key has limits no test
    # reaches (tests of the limits make their own keys).
    from serve_app.core.keys import KeyStore
    keys = KeyStore(get_settings().resolved_database_url())
    _, secret = keys.create("tests", credits=1e12, rate_limit_per_min=10**9,
                            max_concurrent_jobs=10**6)
    keys.engine.dispose()
    os.environ["BGR_TEST_API_KEY"] = secret
    os.environ["BGR_TEST_METRICS_PORT"] = str(metrics_port := _free_port())
    ray.init(address="local",  # a new cluster, never one a `ray start` left behind
             num_cpus=4, resources={"pro_pool": 2}, include_dashboard=False,
             _metrics_export_port=metrics_port,  # Prometheus text, refreshed every second
             _system_config={"metrics_report_interval_ms": 1000},
             runtime_env={"env_vars": env}, logging_level="WARNING", log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    models = ["tiny", "tiny-pro", "tiny-human", "u2net"] + (["mediapipe-selfie"] if real else [])
    app = build_app({
        "models": models,
        "optional_models": ["birefnet-portrait"],  # never present here: skipped, not "missing"
        "default_model": "tiny",
        "pools": POOLS,
        "model_overrides": {"tiny": {"num_replicas": 2, "max_ongoing_requests": 8,
                                     "batch": {"max_batch_size": 4, "batch_wait_timeout_s": 0.005}}},
        "ingress": {"ray_actor_options": {"num_cpus": 0.25}},
        "jobs": {"ray_actor_options": {"num_cpus": 0.25}},
        "prompt": {"ray_actor_options": {"num_cpus": 0.25}, "intra_op_threads": 2},
        "detector": {"ray_actor_options": {"num_cpus": 0.25}},
        "text_prompt": {"model_dir": str(clipseg) if clipseg else None, "threads": 1,
                        "threshold": TEXT_THRESHOLD, "ray_actor_options": {"num_cpus": 0.25}},
        "generate": {"model_dir": str(inpainter) if inpainter else None,
                     "ray_actor_options": {"num_cpus": 0.25}},
    })
    _run_with_deadline(lambda: serve.run(app, name=APP, route_prefix="/",
                                         logging_config={"encoding": "JSON"}), 240)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def api_key(base_url) -> str:
    return os.environ["BGR_TEST_API_KEY"]


@pytest.fixture(scope="session")
def client(base_url, api_key):
    with httpx.Client(base_url=base_url, timeout=60, headers={"X-Api-Key": api_key}) as c:
        yield c
