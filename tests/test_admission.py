"""Admission by expected wait (serve_app/core/admission.py): a synchronous image request whose
models have more queued work than BGR_MAX_QUEUE_WAIT_S is refused at once with 503 and
Retry-After, before its image is decoded; the rule itself, then the real Serve app."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time

import numpy as np
import pytest

from serve_app.core.admission import Admission
from serve_app.core.errors import ServiceUnavailable

from conftest import disk_image, png_bytes, tiny_catalog


def test_expected_wait_is_requests_in_flight_times_service_time_over_slots():
    a = Admission({"pro": 1, "light": 2}, max_wait_s=5.0)
    with contextlib.ExitStack() as held:
        for _ in range(3):  # nothing measured yet: nothing refused, however many
            held.enter_context(a.admitted(["pro"]))
        assert a.in_flight("pro") == 3 and a.expected_wait_s(["pro"]) == 0.0
        a.observe("pro", 2.0)  # one call measured: 2 s of replica time
        assert a.expected_wait_s(["pro"]) == pytest.approx(6.0)
        for _ in range(2):
            held.enter_context(a.admitted(["light"]))
        a.observe("light", 1.0)
        assert a.expected_wait_s(["light"]) == pytest.approx(1.0)  # 2 x 1 s / 2 slots
        assert a.expected_wait_s(["light", "pro"]) == pytest.approx(6.0)  # side by side: max
        with pytest.raises(ServiceUnavailable) as refused, a.admitted(["light", "pro"]):
            pass
        assert refused.value.details["retry_after_s"] == 6
        assert refused.value.details["model"] == "pro"
        assert a.in_flight("light") == 2  # a refused request is not counted
        with a.admitted(["light"]):  # another model's queue does not refuse this one
            assert a.in_flight("light") == 3
    assert a.in_flight("pro") == 0 and a.in_flight("light") == 0  # answered: off the queue


def test_a_request_that_fails_leaves_the_queue_and_samples_are_smoothed():
    a = Admission({"m": 1}, max_wait_s=1.0, smoothing=0.5)
    with pytest.raises(RuntimeError), a.admitted(["m"]):
        raise RuntimeError("the model failed")
    assert a.in_flight("m") == 0
    a.observe("m", 4.0)
    a.observe("m", 0.0)  # a failed call reports nothing: no sample
    a.observe("m", 2.0)
    with a.admitted(["m"]):
        assert a.expected_wait_s(["m"]) == pytest.approx(3.0)  # 4 then 2, halfway


def test_zero_admits_everything():
    a = Admission({"m": 1}, max_wait_s=0.0)
    a.observe("m", 100.0)
    with contextlib.ExitStack() as held:
        for _ in range(10):
            held.enter_context(a.admitted(["m"]))


@pytest.mark.serve
def test_a_saturated_model_answers_503_with_retry_after_before_decoding(client,
                                                                        tmp_path_factory):
    ray = pytest.importorskip("ray")
    from ray import serve

    from pipelines.catalog import load_catalog
    from serve_app.ingress import Ingress

    assert ray.is_initialized()
    tiny = load_catalog(tiny_catalog(tmp_path_factory.mktemp("cat"))).get("tiny")
    own = {"runtime_env": {"env_vars": {
        "BGR_DATA_DIR": str(tmp_path_factory.mktemp("admit-data")),
        "BGR_AUTH_ENABLED": "false", "BGR_MAX_QUEUE_WAIT_S": "2"}}}

    @serve.deployment(name="slow-model", ray_actor_options={"num_cpus": 0.05},
                      max_ongoing_requests=100)
    class SlowModel:
        async def segment(self, image, native=False):
            await asyncio.sleep(1.0)
            return np.full(image.shape[:2], 255, np.uint8), 1.0  # 1 s of replica time

    handles = {"slow-model": SlowModel.bind()}
    catalog = [tiny.model_copy(update={"id": "slow-model"}).model_dump(mode="json")]
    setup = {"default_model": "slow-model", "model_pools": {"slow-model": "light"},
             "pools": {"light": {}}, "model_slots": {"slow-model": 1}}
    ingress = serve.deployment(Ingress, name="Ingress", ray_actor_options={"num_cpus": 0.05,
                                                                            **own})
    serve.run(ingress.bind(handles, catalog, {}, setup, None), name="admit",
              route_prefix="/admit")
    try:
        image = png_bytes(disk_image(64, 48))

        def matte(data: bytes = image):
            return client.post("/admit/image/matte/v1", files={"image": ("a.png", data)},
                               timeout=60)

        assert matte().status_code == 200  # one call measured: 1 s each
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            burst = [pool.submit(matte) for _ in range(8)]
            time.sleep(0.3)
            # while saturated: an image that cannot be decoded is refused as busy, not as bad
            late = matte(b"not an image at all")
            answers = [f.result() for f in burst]
        statuses = sorted(r.status_code for r in answers)
        assert statuses.count(200) >= 2 and statuses.count(503) >= 3, statuses
        assert set(statuses) <= {200, 503}
        busy = next(r for r in answers if r.status_code == 503)
        assert 2 <= int(busy.headers["Retry-After"]) <= 10
        assert busy.json()["message"].startswith("Server busy")  # the /image family's shape
        assert late.status_code == 503, late.text
        assert matte().status_code == 200  # and the model answers again once drained
    finally:
        serve.delete("admit")


def test_a_pools_slots_are_its_most_replicas_times_its_concurrent_calls():
    from serve_app.config import PoolOptions

    assert PoolOptions(num_replicas=2, concurrent_inferences=2).slots() == 4
    # a batching pool reports each call's share of its batch: its replicas are its slots
    assert PoolOptions(num_replicas=2, max_ongoing_requests=8,
                       batch={"max_batch_size": 4}).slots() == 2
    autoscaled = PoolOptions(autoscaling_config={"min_replicas": 1, "max_replicas": 3},
                             concurrent_inferences=2)
    assert autoscaled.slots() == 6
