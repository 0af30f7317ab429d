"""Autoscaling on a real local Ray cluster: a model pool with `autoscaling_config` (min 1, max 3)
grows under a burst of requests and shrinks back after it, every request answered; the job
worker grows with the job queue (the queue-depth policy of deployments/autoscaling.py) and
shrinks once it is empty, every job completed. Replica counts come from Serve's own status,
sampled over time, and are asserted with generous bounds."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from deployments.autoscaling import desired_workers, job_queue_policy

from conftest import disk_image, png_bytes, tiny_catalog

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

APP = "scaling"
# Decisions on a 10 s window of metrics (handles push theirs every few seconds, and on this
# 2-core box a new replica takes ~10 s to start): quick to grow, slow enough to shrink that a
# replica still starting is not given up.
FAST = {"min_replicas": 1, "max_replicas": 3, "upscale_delay_s": 1, "downscale_delay_s": 15,
        "metrics_interval_s": 1, "look_back_period_s": 10}


def test_queue_depth_policy_arithmetic():
    assert desired_workers(0, 0, 2) == 1
    assert desired_workers(5, 1, 2) == 3
    assert desired_workers(1, 0, 0) == 1  # a replica reporting no slots counts as one
    ctx = SimpleNamespace(current_num_replicas=2, aggregated_metrics={
        "jobs_waiting": {"r1": 7.0, "r2": 6.0}, "jobs_running": {"r1": 1.0, "r2": 1.0},
        "job_slots": {"r1": 2.0, "r2": 2.0}})
    assert job_queue_policy(ctx) == (5, {"waiting": 7.0, "running": 2.0})
    assert job_queue_policy(SimpleNamespace(current_num_replicas=2, aggregated_metrics={}))[0] == 2
    busy = SimpleNamespace(current_num_replicas=3, aggregated_metrics={  # 3 jobs on 3 replicas
        "jobs_waiting": {"r1": 0.0}, "jobs_running": {"r1": 1.0, "r2": 1.0, "r3": 1.0},
        "job_slots": {"r1": 2.0, "r2": 2.0, "r3": 2.0}})
    assert job_queue_policy(busy)[0] == 3  # not ceil(3/2) = 2: no running job is interrupted


class Timeline:
    """Running replicas per deployment of the app, sampled from `serve.status()`."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            app = serve.status().applications.get(APP)
            if app is not None:
                counts = {name: d.replica_states.get("RUNNING", 0)
                          for name, d in app.deployments.items()}
                self.samples.append((round(time.monotonic() - self._start, 1), counts))
            time.sleep(0.5)

    def now(self, deployment: str) -> int:
        return self.samples[-1][1].get(deployment, 0) if self.samples else 0

    def series(self, deployment: str) -> list[tuple[float, int]]:
        return [(t, c.get(deployment, 0)) for t, c in self.samples]

    def wait(self, deployment: str, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.samples and predicate(self.now(deployment)):
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def scaling_app(base_url, tmp_path_factory):
    from serve_app.builder import build_app

    data_dir = tmp_path_factory.mktemp("scaling-data")
    env = {"BGR_DATA_DIR": str(data_dir), "BGR_AUTH_ENABLED": "false",
           "BGR_JOB_CONCURRENCY": "1", "BGR_JOB_POLL_S": "0.2",
           "BGR_CATALOG_PATH": str(tiny_catalog(tmp_path_factory.mktemp("scaling-cat")))}
    options = {"num_cpus": 0.05, "runtime_env": {"env_vars": env}}
    serve.run(build_app({
        "models": ["tiny"], "default_model": "tiny", "validate_resources": False,
        "pools": {"light": {"ray_actor_options": {"num_cpus": 0.05}, "max_ongoing_requests": 4,
                            # a tiny model answers in milliseconds: a low target, so that
                            # the 1-2 calls in flight of a busy replica already ask for more
                            "autoscaling_config": {**FAST, "target_ongoing_requests": 0.5}}},
        "ingress": {"ray_actor_options": options},
        "jobs": {"ray_actor_options": options, "autoscaling_config": FAST},
        "prompt": {"enabled": False}, "detector": {"enabled": False},
    }), name=APP, route_prefix="/scaling")
    timeline = Timeline()
    yield timeline
    timeline.stop()
    serve.delete(APP)


def test_model_pool_grows_under_a_burst_and_shrinks_after(scaling_app):
    timeline = scaling_app
    assert timeline.wait("tiny", lambda n: n == 1, 60)
    handle = serve.get_deployment_handle("tiny", app_name=APP)
    image = disk_image(96, 64)
    stop = threading.Event()
    answered, errors = [], []

    def load():
        while not stop.is_set():
            try:
                mask, _ = handle.segment.remote(image).result(timeout_s=60)
                answered.append(int(np.asarray(mask)[32, 48]))
            except Exception as exc:  # noqa: BLE001 - counted, asserted below
                errors.append(repr(exc))

    with ThreadPoolExecutor(16) as pool:
        for _ in range(16):
            pool.submit(load)
        # generous: in the full suite the controller saw the burst only ~90 s in (2 busy cores)
        grew = timeline.wait("tiny", lambda n: n >= 2, 240)
        if grew:  # give it the time to reach its maximum
            timeline.wait("tiny", lambda n: n >= 3, 20)
        stop.set()
    assert grew, (timeline.series("tiny"), len(answered), errors[:3])
    assert max(c for _, c in timeline.series("tiny")) <= 3
    shrank = timeline.wait("tiny", lambda n: n == 1, 90)
    print("tiny replicas over time:", timeline.series("tiny"))
    assert shrank, timeline.series("tiny")
    assert errors == [] and len(answered) > 50
    assert min(answered) > 200  # every answer a real mask: the subject's centre is foreground


def test_job_worker_grows_with_the_queue_and_shrinks_when_it_empties(scaling_app, base_url):
    timeline = scaling_app
    assert timeline.wait("JobWorker", lambda n: n == 1, 60)
    photo = png_bytes(disk_image(2000, 1500))
    with httpx.Client(base_url=f"{base_url}/scaling", timeout=60) as c:
        ids = []
        for _ in range(14):
            r = c.post("/image/hd/submit/v1", files={"image": ("big.png", photo, "image/png")})
            assert r.status_code == 202, r.text
            ids.append(r.json()["uuid"])
        grew = timeline.wait("JobWorker", lambda n: n >= 2, 120)
        assert grew, timeline.series("JobWorker")

        results: dict[str, int] = {}
        deadline = time.monotonic() + 240
        while len(results) < len(ids):  # each result fetched once (one-shot, spec 000)
            assert time.monotonic() < deadline, f"jobs did not finish: {results}"
            for i in ids:
                if i not in results and (r := c.get(f"/image/hd/result/{i}")).status_code != 202:
                    results[i] = r.status_code
            time.sleep(1)
        assert set(results.values()) == {200}, results
    shrank = timeline.wait("JobWorker", lambda n: n == 1, 90)
    print("JobWorker replicas over time:", timeline.series("JobWorker"))
    assert shrank, timeline.series("JobWorker")
    assert max(c for _, c in timeline.series("JobWorker")) <= 3
