"""Async jobs against the real Ray Serve app: HD images (spec 000), /v1/jobs (spec 001), uploads,
downloads and errors (spec 002), webhooks (spec 003), and a worker killed mid-job."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import update

from pipelines import webhooks

from conftest import disk_image, png_bytes, tiny_catalog

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from pipelines.catalog import load_catalog  # noqa: E402
from serve_app.core.job_schema import jobs as jobs_table  # noqa: E402
from serve_app.core.job_store import JobStore  # noqa: E402
from serve_app.core.settings import get_settings  # noqa: E402
from serve_app.ingress import Ingress  # noqa: E402

pytestmark = pytest.mark.serve


def wait_for(fn, timeout=60.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(interval)


def hd_submit(client, data: bytes, base: str = ""):
    return client.post(f"{base}/image/hd/submit/v1", files={"image": ("big.png", data, "image/png")})


def hd_wait(client, uuid: str, base: str = "", timeout: float = 60.0):
    def done():
        r = client.get(f"{base}/image/hd/result/{uuid}")
        return r if r.status_code != 202 else None
    return wait_for(done, timeout)


def assert_002(resp, status: int, code: str, message: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] == code and body["error"]["request_id"]
    if message is not None:
        assert body["error"]["message"] == message
    return body["error"]


@pytest.fixture(scope="module")
def jobs_db(base_url):
    store = JobStore.from_settings(get_settings())  # the same database the app uses
    yield store
    store.close()


# ---- HD image (spec 000) --------------------------------------------------------------------
def test_hd_image_above_the_regular_limit(client, jobs_db):
    img = disk_image(2100, 1400)  # over 2048x2048 in pixels: the regular endpoints refuse it
    resp = hd_submit(client, png_bytes(img))
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["message"] == "Image submitted for processing" and body["status"] == "processing"
    pending = client.get(f"/image/hd/result/{body['uuid']}")
    if pending.status_code == 202:
        assert pending.json() == {"message": "Task is still processing", "uuid": body["uuid"],
                                  "status": "processing"}
    done = hd_wait(client, body["uuid"])
    assert done.status_code == 200 and done.headers["content-type"] == "image/png"
    assert done.headers["cache-control"] == "no-cache"
    out = np.asarray(Image.open(io.BytesIO(done.content)))
    assert out.shape == (1400, 2100, 4) and out[700, 1050, 3] > 240 and out[5, 5, 3] < 10
    # outputs are cleaned up after download
    again = wait_for(lambda: (r := client.get(f"/image/hd/result/{body['uuid']}")).status_code
                     == 404 and r)
    assert again.json() == {"detail": "Processed image file not found"}
    trail = [(e.from_state, e.to_state) for e in jobs_db.events(body["uuid"])]
    assert trail[0] == (None, "created") and trail[-1] == ("processing", "completed")
    artifacts = get_settings().data_dir / "artifacts"
    assert not list(artifacts.glob(f"*/{body['uuid']}/*"))  # no input or output left behind


def test_hd_and_video_submits_take_an_idempotency_key(client, jobs_db):
    """A retry with the same Idempotency-Key gets the job the first submit made: one job,
    one charge; another key (or none) makes another job."""
    from test_video_api import make_clip

    data = png_bytes(disk_image(300, 200))
    sent = [client.post("/image/hd/submit/v1", files={"image": ("a.png", data, "image/png")},
                        headers={"Idempotency-Key": "hd-retry-1"}) for _ in range(2)]
    assert [r.status_code for r in sent] == [202, 202]
    assert sent[0].json()["uuid"] == sent[1].json()["uuid"]
    other = client.post("/image/hd/submit/v1", files={"image": ("a.png", data, "image/png")},
                        headers={"Idempotency-Key": "hd-retry-2"})
    assert other.json()["uuid"] != sent[0].json()["uuid"]
    clip = make_clip(1.0)
    videos = [client.post("/video/submit/v1", files={"video": ("c.mp4", clip, "video/mp4")},
                          data={"bg_color": "0,0,255"},
                          headers={"Idempotency-Key": "video-retry-1"}) for _ in range(2)]
    assert [r.status_code for r in videos] == [202, 202]
    assert videos[0].json() == videos[1].json()  # same uuid, same body
    for uuid in (sent[0].json()["uuid"], other.json()["uuid"]):
        assert hd_wait(client, uuid).status_code == 200
    assert jobs_db.get(videos[0].json()["uuid"]) is not None


def test_hd_errors_have_the_documented_bodies(client):
    assert client.get("/image/hd/result/00000000-0000-0000-0000-000000000000").json() == {
        "detail": "Task not found"}
    bad = hd_submit(client, b"not an image at all")
    assert bad.status_code == 400 and bad.json() == {"detail": "Invalid image file"}


def test_hd_job_failed_by_its_input_is_a_4xx_with_the_reason(client, jobs_db):
    """A 5xx is only ours: a file that turns out truncated when decoded is the client's
    (422, spec 000's body with the reason); the job records whose fault it was."""
    truncated = png_bytes(disk_image(300, 200))[:400]  # a valid header, then nothing
    resp = hd_submit(client, truncated)
    assert resp.status_code == 202, resp.text
    failed = hd_wait(client, resp.json()["uuid"])
    assert failed.status_code == 422, failed.text
    assert failed.json()["detail"].startswith("Image processing failed: ")
    assert "corrupt or truncated" in failed.json()["detail"]
    job = jobs_db.get(resp.json()["uuid"])
    assert "corrupt or truncated" in job.error and job.error_kind == "input"


# ---- /v1/jobs, uploads, downloads -----------------------------------------------------------
def test_upload_create_start_poll_download(client, jobs_db):
    up = client.post("/api/upload", files={"file": ("me.png", png_bytes(disk_image(120, 80)),
                                                    "image/png")})
    assert up.status_code == 201, up.text
    upload = up.json()
    assert upload["media_type"] == "image/png" and upload["kind"] == "image"
    created = client.post("/v1/jobs", json={"upload_id": upload["upload_id"], "model": "light",
                                            "auto_start": False})
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "created" and job["model_id"] == "tiny" and job["output_url"] is None
    early = client.get(f"/api/download/{job['job_id']}")
    assert_002(early, 400, "invalid_request", "Job not completed")

    started = client.post(f"/v1/jobs/{job['job_id']}/start", json={
        "model": "light", "background": {"type": "color", "color": "#0000ff"},
        "composition": {"canvas": {"width": 300, "height": 100},
                        "foreground": {"anchor": "left", "scale": 1, "offset": {"x": 10, "y": 0}}},
    })
    assert started.status_code == 200 and started.json()["status"] in ("processing", "completed")
    again = client.post(f"/v1/jobs/{job['job_id']}/start", json={})
    assert_002(again, 409, "conflict")

    final = wait_for(lambda: (r := client.get(f"/v1/jobs/{job['job_id']}").json())["status"]
                     in ("completed", "failed") and r)
    assert final["status"] == "completed", final
    assert final["completed_at"] >= final["started_at"] >= final["created_at"]
    assert final["output_url"].endswith(f"/api/download/{job['job_id']}")
    got = client.get(final["output_url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert "attachment" in got.headers["content-disposition"]
    out = np.asarray(Image.open(io.BytesIO(got.content)))
    assert out.shape == (100, 300, 3)  # the canvas, opaque: colour background
    np.testing.assert_allclose(out[50, 290], (0, 0, 255), atol=3)  # right edge: background
    assert out[50, 10 + 60, 0] > 150  # the subject (bright disk), anchored left + 10 px
    # output_url is time-bound, not one-shot: fetched again, through /api/download, in ranges
    assert client.get(final["output_url"]).content == got.content
    direct = client.get(f"/api/download/{job['job_id']}")
    assert direct.status_code == 200 and direct.content == got.content
    size = len(got.content)
    assert direct.headers["accept-ranges"] == "bytes"
    part = client.get(final["output_url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == got.content[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{size}"
    tail = client.get(final["output_url"], headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == got.content[-10:]
    rest = client.get(final["output_url"], headers={"Range": f"bytes={size - 5}-"})
    assert rest.status_code == 206 and rest.content == got.content[-5:]
    beyond = client.get(final["output_url"], headers={"Range": f"bytes={size}-"})
    assert_002(beyond, 416, "range_not_satisfiable")
    assert beyond.headers["content-range"] == f"bytes */{size}"
    # once it expires it is gone (the worker's sweep deletes the file later)
    with jobs_db.engine.begin() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.job_id == job["job_id"]).values(
            output_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert_002(client.get(final["output_url"]), 404, "not_found",
               "Output not found: it has expired.")


def test_idempotent_create(client):
    body = {"image_url": "http://127.0.0.1:9/never-fetched.png", "auto_start": False}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-me-1"})
    second = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-me-1"})
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["job_id"] == second.json()["job_id"]


@pytest.mark.parametrize("body, status, code", [
    ({}, 400, "invalid_request"),                                       # no input
    ({"video_url": "https://example.com/a.mp4", "output_format": "png"}, 400, "invalid_request"),
    ({"video_url": "https://example.com/a.mp4", "output_format": "mp4"}, 400,
     "invalid_request"),  # mp4 has no alpha: a colour background is required
    ({"image_url": "https://example.com/a.png", "model": "ultra"}, 400, "invalid_request"),
    ({"image_url": "https://example.com/a.png", "surprise": 1}, 400, "invalid_request"),
    ({"upload_id": "00000000-0000-0000-0000-000000000000"}, 404, "not_found"),
])
def test_create_job_errors_in_the_002_shape(client, body, status, code):
    assert_002(client.post("/v1/jobs", json=body), status, code)


@pytest.mark.parametrize("path", ["/v1/jobs/a%00b", "/api/download/a%00b",
                                  "/v1/jobs/" + "x" * 500])
def test_odd_ids_are_simply_unknown(client, path):
    assert_002(client.get(path), 404, "not_found")


def test_hd_odd_ids_and_missing_field(client):
    assert client.get("/image/hd/result/a%00b").json() == {"detail": "Task not found"}
    assert client.post("/image/hd/submit/v1").status_code == 400


@pytest.mark.parametrize("body", [
    {"image_url": "file:///etc/passwd"},
    {"image_url": "https://example.com/a.png",
     "composition": {"canvas": {"width": 16384, "height": 16384}}},  # over BGR_HD_MAX_PIXELS
    {"video_url": "https://example.com/a.mp4",  # a video frame: over BGR_VIDEO_MAX_PIXELS
     "composition": {"canvas": {"width": 5000, "height": 5000}}},
])
def test_job_inputs_refused_at_create(client, body):
    assert_002(client.post("/v1/jobs", json=body), 400, "invalid_request")


def test_unknown_job_and_bad_upload(client):
    assert_002(client.get("/v1/jobs/nope"), 404, "not_found", "Job not found")
    assert_002(client.get("/api/download/nope"), 404, "not_found", "Job not found")
    gif = client.post("/api/upload", files={"file": ("a.gif", png_bytes(disk_image(), "GIF"),
                                                     "image/gif")})
    assert_002(gif, 400, "invalid_request", "Invalid file type")
    rid = client.get("/v1/jobs/nope", headers={"X-Request-ID": "req-abc"}).json()
    assert rid["error"]["request_id"] == "req-abc"


# ---- image_url input and a signed webhook ---------------------------------------------------
@pytest.fixture(scope="module")
def local_server():
    """Serves a PNG at /photo.png and records POSTs to /hook."""
    photo = png_bytes(disk_image(90, 60))
    hooks: list[tuple[dict, bytes]] = []
    flaky_calls: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/flaky-hook" and not flaky_calls:  # fails once, then works
                flaky_calls.append(1)
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            hooks.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", hooks
    server.shutdown()


def test_image_url_job_with_a_signed_webhook(client, local_server, jobs_db):
    url, hooks = local_server
    resp = client.post("/v1/jobs", json={"image_url": f"{url}/photo.png",
                                         "webhook_url": f"{url}/hook", "webhook_secret": "s3cret"})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job_id"]
    headers, body = wait_for(lambda: next(((h, b) for h, b in hooks
                                           if json.loads(b)["job_id"] == job_id), None))
    payload = json.loads(body)
    assert payload["event"] == "job_completed" and payload["results"][0]["media_type"] == "image/png"
    assert webhooks.verify_body_signature(payload, "s3cret")
    assert webhooks.verify_header_signature(body, headers["x-webhook-timestamp"],
                                            headers["x-webhook-signature"], "s3cret")
    assert not webhooks.verify_body_signature(payload, "other")
    deliveries = wait_for(lambda: jobs_db.webhooks.deliveries(job_id))
    assert deliveries[0]["ok"] and deliveries[0]["status_code"] == 200
    assert jobs_db.get(job_id).webhook_state == "delivered"


def test_failed_webhook_delivery_is_retried_and_recorded(client, local_server, jobs_db):
    url, hooks = local_server
    resp = client.post("/v1/jobs", json={"image_url": f"{url}/photo.png",
                                         "webhook_url": f"{url}/flaky-hook"})
    job_id = resp.json()["job_id"]
    wait_for(lambda: jobs_db.get(job_id).webhook_state == "delivered", timeout=30)
    attempts = [(d["attempt"], d["ok"], d["status_code"]) for d in jobs_db.webhooks.deliveries(job_id)]
    assert attempts == [(1, False, 503), (2, True, 200)]
    payload = json.loads(next(b for _, b in hooks if json.loads(b)["job_id"] == job_id))
    assert payload["signature"] is None  # no secret given: unsigned, same shape


# ---- a worker killed mid-job ----------------------------------------------------------------
def test_job_survives_the_app_being_killed_mid_job(client, base_url, tmp_path_factory):
    tiny = load_catalog(tiny_catalog(tmp_path_factory.mktemp("cat"))).get("tiny")
    # Its own data folder (database, artifacts): the session app's worker must not see its jobs.
    data_dir = tmp_path_factory.mktemp("restart-data")
    # (auth off there: its database has no keys; the session app tests auth)
    own = {"runtime_env": {"env_vars": {"BGR_DATA_DIR": str(data_dir),
                                        "BGR_AUTH_ENABLED": "false"}}}
    jobs_db = JobStore(f"sqlite:///{data_dir / 'bgremove.db'}")

    def deploy(delay_s: float):
        @serve.deployment(name="slow-model", ray_actor_options={"num_cpus": 0.05})
        class SlowModel:
            async def segment(self, image, native=False):
                await asyncio.sleep(delay_s)
                return np.full(image.shape[:2], 255, np.uint8), delay_s

        from deployments.job_runner import JobWorker

        handles = {"slow-model": SlowModel.bind()}
        worker = serve.deployment(JobWorker, name="JobWorker",
                                  ray_actor_options={"num_cpus": 0.05, **own}).bind(handles)
        catalog = [tiny.model_copy(update={"id": "slow-model"}).model_dump(mode="json")]
        setup = {"default_model": "slow-model", "model_pools": {"slow-model": "light"},
                 "pools": {"light": {}}}
        ingress = serve.deployment(Ingress, name="Ingress",
                                   ray_actor_options={"num_cpus": 0.05, **own})
        serve.run(ingress.bind(handles, catalog, {}, setup, worker), name="restart",
                  route_prefix="/restart")

    deploy(delay_s=60.0)  # the first model never finishes in time
    resp = hd_submit(client, png_bytes(disk_image(64, 48)), base="/restart")
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["uuid"]
    wait_for(lambda: jobs_db.get(job_id).lease_owner)  # a worker holds it: mid-job
    serve.delete("restart")  # kill the app: model, worker and ingress replicas go away
    assert jobs_db.get(job_id).state == "processing"

    deploy(delay_s=0.1)  # the app comes back
    done = hd_wait(client, job_id, base="/restart", timeout=60)
    assert done.status_code == 200, done.text
    job = jobs_db.get(job_id)
    reasons = [e.reason for e in jobs_db.events(job_id)]
    assert job.state == "completed"
    # Serve stops the old worker gracefully: it hands the job back (attempt not spent) and the
    # new app's worker takes it at once; a worker killed without that is replaced after its
    # lease expired, on a second attempt
    if job.attempts == 1:
        assert any("its worker replica stopped" in r for r in reasons), reasons
    else:
        assert job.attempts == 2 and any("lease expired" in r for r in reasons), reasons
    serve.delete("restart")
    jobs_db.close()


def test_video_job_from_an_upload_as_prores_with_alpha(client, tmp_path):
    from test_video_api import make_clip

    from pipelines import video

    up = client.post("/api/upload", files={"file": ("clip.mp4", make_clip(1.0), "video/mp4")})
    assert up.status_code == 201 and up.json()["kind"] == "video", up.text
    created = client.post("/v1/jobs", json={"upload_id": up.json()["upload_id"],
                                            "output_format": "mov", "composition": {
                                                "canvas": {"width": 128, "height": 96},
                                                "foreground": {"anchor": "center"}}})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    final = wait_for(lambda: (r := client.get(f"/v1/jobs/{job_id}").json())["status"]
                     in ("completed", "failed") and r, timeout=90)
    assert final["status"] == "completed", final
    got = client.get(final["output_url"])
    assert got.status_code == 200 and got.headers["content-type"] == "video/quicktime"
    path = tmp_path / "out.mov"
    path.write_bytes(got.content)
    container = __import__("av").open(str(path))
    frames = [f.to_ndarray(format="rgba") for f in container.decode(video=0)]
    container.close()
    assert len(frames) == 10 and frames[0].shape == (96, 128, 4)
    assert frames[0][48, 64, 3] > 200 and frames[0][2, 2, 3] < 30  # subject centred, alpha kept
    assert video.probe(str(path)).fps == 10


def test_one_video_is_spread_over_replicas_and_batched(client):
    """The video's frames go to the model deployment a window at a time: a batching pool runs
    them in batches, and a pool with two replicas has both working on the same clip."""
    from test_video_api import make_clip

    up = client.post("/api/upload", files={"file": ("clip.mp4", make_clip(3.0), "video/mp4")})
    upload_id = up.json()["upload_id"]
    for tier in ("light", "pro"):  # tiny: 2 replicas, batches of 4; tiny-pro: 1, batches of 4
        resp = client.post("/v1/jobs", json={"upload_id": upload_id, "model": tier})
        job_id = resp.json()["job_id"]
        final = wait_for(lambda j=job_id: (r := client.get(f"/v1/jobs/{j}").json())["status"]
                         in ("completed", "failed") and r, timeout=90)
        assert final["status"] == "completed", final

    def replicas(name):
        handle = serve.get_deployment_handle(name, app_name="bgremove")
        seen = {}
        for _ in range(30):  # each call lands on one replica; collect them all
            d = handle.describe.remote().result(timeout_s=30)
            seen[d["replica_id"]] = d
        return seen

    light = replicas("tiny")
    assert len(light) == 2 and all(d["images"] > 0 for d in light.values())
    pro = replicas("tiny-pro")
    assert max(d["largest_batch"] for d in pro.values()) > 1  # frames were batched


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.2:9/hook", "non-public address"),  # loopback outside the allowed network
    ("http://[::1]/hook", "non-public address"),
    ("http://169.254.169.254/latest", "non-public address"),
    ("ftp://example.com/hook", "must use http or https"),
    ("http://user:pw@example.com/hook", "user name or password"),
])
def test_webhook_url_is_checked_when_the_job_is_created(client, url, reason):
    body = {"image_url": "http://127.0.0.1:9/never-fetched.png", "auto_start": False,
            "webhook_url": url}
    err = assert_002(client.post("/v1/jobs", json=body), 400, "invalid_request")
    assert err["message"].startswith("webhook_url ") and reason in err["message"]
