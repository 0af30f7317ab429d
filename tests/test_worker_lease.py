"""A job worker that loses a job's lease (its heartbeat no longer renews it: another worker
may have taken the job over) stops the job at its next frame instead of running it to the end
(no replica work, no output and no charge from a worker that no longer owns the job)."""

from __future__ import annotations

import time

import numpy as np
from test_auto import _SyncHandle, _SyncResponse

from pipelines.auto import ServedModel
from pipelines.catalog import Tier, load_catalog


class _SlowResponse(_SyncResponse):
    def result(self, timeout_s=None):
        time.sleep(0.05)  # a model's time per frame
        return super().result(timeout_s)


class _SlowHandle(_SyncHandle):
    def remote(self, sent, native):
        self.calls.append(_SlowResponse(np.full(sent.shape[:2], 255, np.uint8)))
        return self.calls[-1]


def test_a_worker_that_lost_the_lease_stops_the_job(tmp_path, monkeypatch):
    from test_video_api import make_clip

    from deployments.job_runner import JobWorker
    from serve_app.core.job_params import JobParams
    from serve_app.core.job_store import COMPLETED
    from serve_app.core.settings import get_settings

    monkeypatch.setenv("BGR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BGR_JOB_LEASE_S", "0.6")  # a heartbeat every 0.2 s
    monkeypatch.setenv("BGR_JOB_POLL_S", "0.1")
    monkeypatch.delenv("BGR_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    spec = next(m for m in load_catalog().models if m.id == "u2netp")
    handle = _SlowHandle(None)
    worker = JobWorker(models={"u2netp": handle},  # type: ignore[arg-type]
                       auto_models=[ServedModel("u2netp", Tier.light, 1.0)],
                       specs={"u2netp": spec.model_dump(mode="json")})
    try:
        monkeypatch.setattr(worker.store, "heartbeat", lambda *args: False)  # lease lost
        claim, claimed = worker.store.claim, []  # this worker gets the job once only

        def claim_once(*args):
            if claimed:
                return None
            claimed.append(claim(*args))
            return claimed[-1]
        monkeypatch.setattr(worker.store, "claim", claim_once)
        key = "inputs/lease/input"
        with worker.artifacts.writer(key) as out:
            out.write(make_clip(4.0))  # 40 frames: 2 s of model time at least
        job, _ = worker.store.create(api="v1", kind="video", input_key=key, start=True,
                                     params=JobParams(model_id="u2netp", output_format="webm"))
        worker.wake()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and not handle.calls:
            time.sleep(0.05)
        time.sleep(1.0)  # past the first heartbeat
        calls = len(handle.calls)
        assert 0 < calls < 40, calls  # stopped mid-clip
        time.sleep(2.0)
        assert len(handle.calls) == calls  # and nothing more
        assert worker.store.get(job.job_id).state != COMPLETED
        assert not list(tmp_path.rglob("output.webm"))
    finally:
        worker._shutdown()
        get_settings.cache_clear()
