"""Two job worker replicas on one PostgreSQL database: 200 jobs with webhooks, each job
processed by exactly one worker, once, and each webhook sent once (issue 31's bar for the
claim races: rows claimed with SKIP LOCKED, webhooks claimed one at a time)."""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time
import uuid

import numpy as np
import pytest
from test_auto import _SyncHandle, _SyncResponse

from pipelines.auto import ServedModel
from pipelines.catalog import Tier, load_catalog

from conftest import disk_image, png_bytes

JOBS = 200


class _CountingHandle(_SyncHandle):
    """A model replica answering a full mask at the size it is sent; counts its calls."""

    def remote(self, sent, native):
        self.calls.append(_SyncResponse(np.full(sent.shape[:2], 255, np.uint8)))
        return self.calls[-1]


@pytest.fixture
def receiver():
    """A local webhook receiver counting deliveries per job."""
    got: collections.Counter[str] = collections.Counter()

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            got[body["job_id"]] += 1
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()


def test_two_workers_share_200_jobs_with_no_job_or_webhook_twice(postgres_url, receiver,
                                                                 tmp_path, monkeypatch):
    import psycopg

    from deployments.job_runner import JobWorker
    from serve_app.core.job_params import JobParams
    from serve_app.core.job_store import COMPLETED
    from serve_app.core.settings import get_settings

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    hook_url, deliveries = receiver
    monkeypatch.setenv("BGR_DATABASE_URL", postgres_url.rsplit("/", 1)[0] + f"/{name}")
    monkeypatch.setenv("BGR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BGR_JOB_POLL_S", "0.05")
    monkeypatch.setenv("BGR_JOB_CONCURRENCY", "4")
    monkeypatch.setenv("BGR_URL_ALLOWED_NETWORKS", '["127.0.0.1/32"]')
    get_settings.cache_clear()
    spec = next(m for m in load_catalog().models if m.id == "u2netp").model_dump(mode="json")
    handles = [_CountingHandle(None), _CountingHandle(None)]
    workers = [JobWorker(models={"u2netp": h},  # type: ignore[arg-type]
                         auto_models=[ServedModel("u2netp", Tier.light, 1.0)],
                         specs={"u2netp": spec}) for h in handles]
    try:
        store, image = workers[0].store, png_bytes(disk_image(64, 48))
        ids = []
        for i in range(JOBS):
            key = f"inputs/{i}/input"
            with workers[0].artifacts.writer(key) as out:
                out.write(image)
            job, _ = store.create(api="v1", kind="image", input_key=key, start=True,
                                  webhook_url=hook_url,
                                  params=JobParams(model_id="u2netp", output_format="png"))
            ids.append(job.job_id)
        for w in workers:
            w.wake()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and (
                sum(deliveries.values()) < JOBS
                or any(store.get(j).state != COMPLETED for j in ids[-5:])):
            time.sleep(0.2)
        time.sleep(1.0)  # a second delivery or a second run would show by now
        assert all(store.get(j).state == COMPLETED for j in ids)
        assert sum(len(h.calls) for h in handles) == JOBS  # each job's model call once
        assert all(h.calls for h in handles)  # both workers took part
        assert set(deliveries) == set(ids) and set(deliveries.values()) == {1}
        claims = [e for j in ids for e in store.events(j) if "claimed by" in e.reason]
        assert len(claims) == JOBS
    finally:
        for w in workers:
            w._shutdown()
            w.store.close()
        get_settings.cache_clear()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
