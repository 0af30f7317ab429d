"""The stored-file flows of the real Ray Serve app against both artifact stores (a fixture
parameter): uploads, HD images, videos, /v1/jobs, downloads with ranges, expiry and retention on
the session app's local folder and on a second app of the same cluster whose only storage is a
bucket on a real S3 server; and an S3 outage in the middle of a job."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import update
from test_jobs_api import assert_002, hd_submit, hd_wait, wait_for

from conftest import disk_image, png_bytes, static_http_server, tiny_catalog

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from serve_app.core import retention  # noqa: E402
from serve_app.core.artifacts import ArtifactStore, LocalArtifactStore  # noqa: E402
from serve_app.core.job_schema import jobs as jobs_table  # noqa: E402
from serve_app.core.job_store import JobStore  # noqa: E402
from serve_app.core.settings import get_settings  # noqa: E402

pytestmark = pytest.mark.serve
S3_APP = "s3-store"


@dataclass
class Flow:
    store_kind: str
    client: httpx.Client
    base: str  # the app's route prefix
    jobs: JobStore
    artifacts: ArtifactStore  # the app's store, seen from the test process


@pytest.fixture(scope="module")
def s3_app(base_url, s3_server, tmp_path_factory):
    """A second app in the session's cluster, at /s3, storing nothing on a shared folder: its
    artifacts are in the bucket and its job database is its own (auth off: no keys there)."""
    from s3_server import BUCKET

    from serve_app.builder import build_app
    from serve_app.core.s3_artifacts import S3ArtifactStore

    data_dir = tmp_path_factory.mktemp("s3-app-data")
    prefix = f"app-{uuid.uuid4().hex[:8]}"
    env = {**s3_server.app_env(), "BGR_ARTIFACTS_URL": f"s3://{BUCKET}/{prefix}",
           "BGR_DATA_DIR": str(data_dir), "BGR_AUTH_ENABLED": "false",
           "BGR_CATALOG_PATH": str(tiny_catalog(tmp_path_factory.mktemp("s3-cat")))}
    options = {"num_cpus": 0.05, "runtime_env": {"env_vars": env}}
    app = build_app({
        "models": ["tiny"], "default_model": "tiny", "validate_resources": False,
        "pools": {"light": {"ray_actor_options": {"num_cpus": 0.05}}},
        "ingress": {"ray_actor_options": options}, "jobs": {"ray_actor_options": options},
        "prompt": {"enabled": False}, "detector": {"enabled": False},
    })
    serve.run(app, name=S3_APP, route_prefix="/s3")
    jobs = JobStore(f"sqlite:///{data_dir / 'bgremove.db'}")
    yield S3ArtifactStore(BUCKET, prefix, client=s3_server.client()), jobs
    jobs.close()
    serve.delete(S3_APP)


@pytest.fixture(params=["local", "s3"])
def flow(request, client, base_url):
    if request.param == "local":
        settings = get_settings()
        jobs = JobStore.from_settings(settings)
        yield Flow("local", client, "", jobs,
                   LocalArtifactStore(settings.data_dir.expanduser() / "artifacts"))
        jobs.close()
        return
    artifacts, jobs = request.getfixturevalue("s3_app")
    with httpx.Client(base_url=base_url, timeout=60) as plain:
        yield Flow("s3", plain, "/s3", jobs, artifacts)


def inputs_left(flow: Flow, job_id: str) -> bool:
    key = f"inputs/{job_id}/input"
    return flow.artifacts.exists(key)


def test_upload_job_download_ranges_expiry_and_retention(flow: Flow):
    c, base = flow.client, flow.base
    up = c.post(f"{base}/api/upload", files={"file": ("me.png", png_bytes(disk_image(120, 80)),
                                                      "image/png")})
    assert up.status_code == 201, up.text
    upload_key = f"uploads/{up.json()['upload_id']}/input"
    assert flow.artifacts.exists(upload_key)  # the store the app was given, and no other
    created = c.post(f"{base}/v1/jobs", json={"upload_id": up.json()["upload_id"]})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    final = wait_for(lambda: (r := c.get(f"{base}/v1/jobs/{job_id}").json())["status"]
                     in ("completed", "failed") and r)
    assert final["status"] == "completed", final
    direct = c.get(f"{base}/api/download/{job_id}")
    assert direct.status_code == 200 and direct.headers["content-type"] == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(direct.content)))
    assert rgba.shape == (80, 120, 4) and rgba[40, 60, 3] > 200 and rgba[2, 2, 3] < 30
    output_key = flow.jobs.get(job_id).output_key
    assert flow.artifacts.open(output_key).read() == direct.content
    if flow.store_kind == "s3":  # a presigned bucket link: no API key, not through the ingress
        assert "X-Amz-Signature=" in final["output_url"]
        expires = datetime.fromisoformat(final["output_expires_at"])
        left = (expires - datetime.now(UTC)).total_seconds()
        assert f"X-Amz-Expires={int(left)}" in final["output_url"] or \
            f"X-Amz-Expires={int(left) + 1}" in final["output_url"]  # expires with the output
        got = httpx.get(final["output_url"], timeout=30)
        assert got.status_code == 200 and got.content == direct.content
        ranged = httpx.get(final["output_url"], headers={"Range": "bytes=0-9"}, timeout=30)
        assert ranged.status_code == 206 and ranged.content == direct.content[:10]
    else:
        assert final["output_url"].endswith(f"/api/download/{job_id}")
    size = len(direct.content)
    part = c.get(f"{base}/api/download/{job_id}", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == direct.content[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{size}"
    tail = c.get(f"{base}/api/download/{job_id}", headers={"Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == direct.content[-7:]
    beyond = c.get(f"{base}/api/download/{job_id}", headers={"Range": f"bytes={size}-"})
    assert_002(beyond, 416, "range_not_satisfiable")

    with flow.jobs.engine.begin() as conn:  # expire it; the worker's sweep deletes it
        conn.execute(update(jobs_table).where(jobs_table.c.job_id == job_id).values(
            output_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert_002(c.get(f"{base}/api/download/{job_id}"), 404, "not_found",
               "Output not found: it has expired.")
    assert c.get(f"{base}/v1/jobs/{job_id}").json()["output_url"] is None
    retention.sweep(flow.jobs, flow.artifacts, 3600)  # what the worker runs every minute
    assert not flow.artifacts.exists(output_key)
    assert flow.artifacts.exists(upload_key)  # an upload is kept for its own retention
    retention.sweep(flow.jobs, flow.artifacts, -1)  # ... and swept once that is over
    assert not flow.artifacts.exists(upload_key)


def test_hd_image_round_trip(flow: Flow):
    c, base = flow.client, flow.base
    resp = hd_submit(c, png_bytes(disk_image(2100, 1400)), base=base)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["uuid"]
    result = hd_wait(c, job_id, base=base, timeout=90)
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(result.content)))
    assert out.shape == (1400, 2100, 4) and out[700, 1050, 3] > 200
    wait_for(lambda: not inputs_left(flow, job_id))  # the job's input is dropped when done


def test_video_round_trip(flow: Flow, tmp_path):
    from test_video_api import make_clip

    from pipelines import video

    c, base = flow.client, flow.base
    resp = c.post(f"{base}/video/submit/v1",
                  files={"video": ("clip.mp4", make_clip(1.0), "video/mp4")})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["uuid"]
    done = wait_for(lambda: (r := c.get(f"{base}/video/result/{job_id}")).status_code != 202
                    and r, timeout=120)
    assert done.status_code == 200 and done.headers["content-type"] == "video/webm", done.text
    path = tmp_path / "out.webm"
    path.write_bytes(done.content)
    info = video.probe(str(path))
    assert info.frame_count == 10 and (info.width, info.height) == (96, 64)
    wait_for(lambda: not inputs_left(flow, job_id))


def test_v1_video_job_from_an_upload(flow: Flow, tmp_path):
    from test_video_api import make_clip

    c, base = flow.client, flow.base
    up = c.post(f"{base}/api/upload", files={"file": ("clip.mp4", make_clip(1.0), "video/mp4")})
    assert up.status_code == 201 and up.json()["kind"] == "video", up.text
    created = c.post(f"{base}/v1/jobs", json={"upload_id": up.json()["upload_id"],
                                              "output_format": "webm"})
    job_id = created.json()["job_id"]
    final = wait_for(lambda: (r := c.get(f"{base}/v1/jobs/{job_id}").json())["status"]
                     in ("completed", "failed") and r, timeout=120)
    assert final["status"] == "completed", final
    got = c.get(f"{base}/api/download/{job_id}")
    assert got.status_code == 200 and got.content[:4] == b"\x1a\x45\xdf\xa3"  # EBML: WebM


def test_shotgun_result_links(flow: Flow):
    import base64

    c, base = flow.client, flow.base
    resp = c.post(f"{base}/remove-background", json={
        "image": base64.b64encode(png_bytes(disk_image(120, 80))).decode(),
        "include_models": ["tiny"]})
    assert resp.status_code == 200, resp.text
    row = resp.json()["results"][0]
    link = row["image_url"]
    assert f"{base}/results/" in link  # served by any ingress replica, from the store
    job_id, name = link.rsplit("/", 2)[-2:]
    assert flow.artifacts.exists(f"results/{job_id}/{name}")
    got = c.get(link)
    assert got.status_code == 200 and got.content == base64.b64decode(row["image_base64"])
    assert got.headers["content-type"] == "image/png" and "max-age" in got.headers["cache-control"]


def test_s3_outage_mid_job_resumes_and_loses_nothing(s3_app, s3_server, base_url):
    _, jobs = s3_app
    photo = png_bytes(disk_image(90, 60))
    with static_http_server({"/p.png": photo}) as files, \
            httpx.Client(base_url=f"{base_url}/s3", timeout=60) as c:
        created = c.post("/v1/jobs", json={"image_url": f"{files}/p.png", "auto_start": False})
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        s3_server.stop()
        try:
            started = c.post(f"/v1/jobs/{job_id}/start", json={})
            assert started.status_code == 200, started.text
            # the worker cannot store the output: the job goes back to the queue, not failed
            wait_for(lambda: any("back in the queue" in e.reason for e in jobs.events(job_id)),
                     timeout=60)
            assert jobs.get(job_id).state == "processing"
            refused = c.post("/api/upload", files={"file": ("a.png", photo, "image/png")})
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "5"
            assert "artifact storage cannot be used" in refused.json()["error"]["message"]
            health = c.get("/health")
            assert health.status_code == 503
            assert health.json()["dependencies"]["storage"]["status"] == "unavailable"
        finally:
            s3_server.start()
        final = wait_for(lambda: (r := c.get(f"/v1/jobs/{job_id}").json())["status"]
                         in ("completed", "failed") and r, timeout=90)
        assert final["status"] == "completed", final
        got = httpx.get(final["output_url"], timeout=30)
        assert got.status_code == 200
        assert np.asarray(Image.open(io.BytesIO(got.content))).shape == (60, 90, 4)
        assert jobs.get(job_id).attempts == 1  # the outage spent no attempt
        wait_for(lambda: c.get("/health").status_code == 200, timeout=30)
