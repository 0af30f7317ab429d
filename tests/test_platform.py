"""API keys, request ids, rate limits and ownership against the real Ray Serve app (auth on)."""

from __future__ import annotations

import base64
import http.server
import os
import threading
import time

import httpx
import pytest

from serve_app.core.keys import KeyStore

from conftest import disk_image, png_bytes

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def keys(base_url) -> KeyStore:
    from serve_app.core.settings import Settings
    data_dir = os.environ["BGR_DATA_DIR"]
    return KeyStore(Settings(data_dir=data_dir).resolved_database_url())


def new_client(base_url: str, secret: str | None) -> httpx.Client:
    headers = {"X-Api-Key": secret} if secret is not None else {}
    return httpx.Client(base_url=base_url, timeout=60, headers=headers)


def make_key(keys: KeyStore, **limits) -> str:
    return keys.create(f"k-{time.monotonic_ns()}", **{"credits": 1000, **limits})[1]


PNG = png_bytes(disk_image(32, 24))
SHOTGUN = {"image": base64.b64encode(PNG).decode(), "include_models": ["tiny"]}


@pytest.mark.parametrize("secret, message", [
    (None, "Missing API key: send it in the X-Api-Key header."),
    ("bgr_not-a-real-key", "Invalid API key."),
])
def test_missing_or_wrong_key_is_401_in_each_familys_shape(base_url, secret, message):
    with new_client(base_url, secret) as c:
        r = c.post("/image/matte/v1", files={"image": ("a.png", PNG, "image/png")})
        assert (r.status_code, r.json()) == (401, {"message": message})
        r = c.get("/video/result/00000000-0000-4000-8000-000000000000")
        assert (r.status_code, r.json()) == (401, {"detail": message})
        r = c.get("/v1/jobs/00000000-0000-4000-8000-000000000000",
                  headers={"X-Request-ID": "trace-123"})
        assert r.status_code == 401 and r.headers["X-Request-ID"] == "trace-123"
        assert r.json() == {"error": {"code": "invalid_api_key", "message": message,
                                      "request_id": "trace-123"}}
        r = c.post("/remove-background", json=SHOTGUN)
        assert r.status_code == 401
        assert r.json() == {"error": {"type": "authentication_error", "message": message,
                                      "details": {}}}
        assert "X-RateLimit-Limit" not in r.headers
        # public: health and the API docs
        assert c.get("/health").status_code == 200
        assert c.get("/openapi.json").status_code == 200


def test_request_ids_on_every_response(client):
    r = client.get("/models", headers={"X-Request-ID": "mine-42"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "mine-42"
    r = client.get("/v1/jobs/not-an-id")
    assert r.status_code == 404
    rid = r.headers["X-Request-ID"]
    assert rid and r.json()["error"]["request_id"] == rid
    assert client.get("/models").headers["X-Request-ID"] != rid


def test_rate_limit_headers_and_429(base_url, keys):
    secret = make_key(keys, rate_limit_per_min=3)
    with new_client(base_url, secret) as c:
        for _ in range(2):  # all four requests must fall in one window
            if 60 - time.time() % 60 < 8:
                time.sleep(60 - time.time() % 60 + 0.5)
            seen = [c.get("/models") for _ in range(4)]
            if len({r.headers["X-RateLimit-Reset"] for r in seen}) == 1:
                break
    assert [r.status_code for r in seen] == [200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in seen] == ["2", "1", "0", "0"]
    assert {r.headers["X-RateLimit-Limit"] for r in seen} == {"3"}
    reset = int(seen[0].headers["X-RateLimit-Reset"])
    assert reset % 60 == 0 and 0 < reset - time.time() <= 61
    refused = seen[3]
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert refused.json()["error"]["type"] == "rate_limited"
    assert refused.json()["error"]["details"]["limit"] == 3


def test_revoked_key_stops_working(base_url, keys):
    name = f"revoke-{time.monotonic_ns()}"
    _, secret = keys.create(name)
    with new_client(base_url, secret) as c:
        assert c.get("/models").status_code == 200
        keys.revoke(name)
        time.sleep(0.7)  # BGR_AUTH_CACHE_S in the test app
        assert c.get("/models").status_code == 401


def test_jobs_uploads_and_shotgun_jobs_belong_to_their_key(base_url, keys):
    a, b = make_key(keys), make_key(keys)
    with new_client(base_url, a) as ca, new_client(base_url, b) as cb:
        up = ca.post("/api/upload", files={"file": ("a.png", PNG, "image/png")})
        assert up.status_code == 201
        upload_id = up.json()["upload_id"]
        r = cb.post("/v1/jobs", json={"upload_id": upload_id})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        job = ca.post("/v1/jobs", json={"upload_id": upload_id, "auto_start": False})
        assert job.status_code == 201
        job_id = job.json()["job_id"]
        for method, path in (("GET", f"/v1/jobs/{job_id}"), ("POST", f"/v1/jobs/{job_id}/start"),
                             ("GET", f"/api/download/{job_id}")):
            r = cb.request(method, path, json={} if method == "POST" else None)
            assert r.status_code == 404, (path, r.text)
        assert ca.get(f"/v1/jobs/{job_id}").status_code == 200

        hd = ca.post("/image/hd/submit/v1", files={"image": ("a.png", PNG, "image/png")})
        assert hd.status_code == 202
        r = cb.get(f"/image/hd/result/{hd.json()['uuid']}")
        assert (r.status_code, r.json()) == (404, {"detail": "Task not found"})

        shot = ca.post("/remove-background", json=SHOTGUN)
        assert shot.status_code == 200
        pick = {"job_id": shot.json()["job_id"], "selected_model_id": "tiny"}
        r = cb.post("/log-selection", json=pick)
        assert r.status_code == 400 and "Unknown job_id" in r.json()["error"]["message"]
        assert ca.post("/log-selection", json=pick).status_code == 200


class _SlowImage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        time.sleep(4)  # keeps the job that fetches it "processing" meanwhile
        self.send_response(200)
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args):
        pass


def test_concurrent_jobs_per_key(base_url, keys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowImage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/slow.png"
    try:
        with new_client(base_url, make_key(keys, max_concurrent_jobs=1)) as c:
            first = c.post("/v1/jobs", json={"image_url": url})
            assert first.status_code == 201 and first.json()["status"] == "processing"
            second = c.post("/v1/jobs", json={"image_url": url})
            assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limited"
            assert int(second.headers["Retry-After"]) >= 1
            created = c.post("/v1/jobs", json={"image_url": url, "auto_start": False})
            assert created.status_code == 201  # a created job is not in progress
            started = c.post(f"/v1/jobs/{created.json()['job_id']}/start", json={})
            assert started.status_code == 429
            deadline = time.monotonic() + 60
            while c.get(f"/v1/jobs/{first.json()['job_id']}").json()["status"] == "processing":
                assert time.monotonic() < deadline
                time.sleep(0.3)
            assert c.post(f"/v1/jobs/{created.json()['job_id']}/start", json={}).status_code == 200
    finally:
        server.shutdown()


def test_credits_are_checked_before_work_and_charged_on_success(base_url, keys):
    secret = make_key(keys, credits=4)
    with new_client(base_url, secret) as c:
        assert c.post("/image/matte/v1", files={"image": ("a.png", PNG, "image/png")}
                      ).status_code == 200                                       # 4 -> 3
        shot = c.post("/remove-background",
                      json={**SHOTGUN, "include_models": ["tiny", "tiny-human"]})
        assert shot.status_code == 200                                           # 3 -> 1
        # a bad request is not charged
        assert c.post("/image/matte/v1", files={"image": ("a.png", b"junk", "image/png")}
                      ).status_code == 400
        # 2 models > balance 1: refused before any work, in each family's shape
        r = c.post("/remove-background", json={**SHOTGUN, "include_models": ["tiny", "tiny-pro"]})
        assert r.status_code == 402 and r.json()["error"]["type"] == "insufficient_credits"
        assert r.json()["error"]["details"] == {"required": 2.0, "balance": 1.0}
        hd = c.post("/image/hd/submit/v1", files={"image": ("a.png", PNG, "image/png")})
        assert hd.status_code == 202                       # 1 -> 0, charged on completion
        deadline = time.monotonic() + 60
        while c.get(f"/image/hd/result/{hd.json()['uuid']}").status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        r = c.post("/v1/jobs", json={"image_url": "https://example.com/a.png"})
        assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"
        assert c.post("/v1/jobs", json={"image_url": "https://example.com/a.png",
                                        "auto_start": False}).status_code == 201
        r = c.post("/image/matte/v1", files={"image": ("a.png", PNG, "image/png")})
        assert r.status_code == 402 and r.json()["message"].startswith("Not enough credits")

        usage = c.get("/v1/usage").json()
        assert usage["balance"] == 0 and usage["total_credits"] == 4
        ops = {o["operation"]: o for o in usage["operations"]}
        assert ops["image.matte"]["count"] == 1 and ops["shotgun"]["units"] == 2
        assert ops["hd:image"]["credits"] == 1


def test_video_is_charged_per_processed_second(base_url, keys):
    from test_video_api import make_clip, wait_result
    secret = make_key(keys, credits=10)
    with new_client(base_url, secret) as c:
        r = c.post("/video/submit/v1", files={"video": ("c.mp4", make_clip(1.5), "video/mp4")},
                   data={"bg_color": "0,0,255"})
        assert r.status_code == 202
        assert wait_result(c, r.json()["uuid"]).status_code == 200
        usage = c.get("/v1/usage").json()
    (op,) = usage["operations"]
    assert op["operation"] == "video:video" and op["units"] == pytest.approx(1.5, abs=0.11)
    assert usage["balance"] == pytest.approx(10 - op["units"])
    with new_client(base_url, make_key(keys, credits=1)) as c:  # 1.5 s needs 1.5 credits
        r = c.post("/video/submit/v1", files={"video": ("c.mp4", make_clip(1.5), "video/mp4")})
        assert r.status_code == 402 and r.json()["detail"].startswith("Not enough credits")


def test_structured_logs_carry_request_id_and_key_name_but_no_secrets(client, api_key):
    import glob
    import json

    import ray
    ctx = ray.get_runtime_context()
    logs = f"{ctx.get_temp_dir()}/{ctx.get_session_name()}/logs/serve"
    rid = f"log-check-{time.monotonic_ns()}"
    assert client.get("/models", headers={"X-Request-ID": rid}).status_code == 200
    records = []
    deadline = time.monotonic() + 10
    while not records and time.monotonic() < deadline:
        for path in glob.glob(f"{logs}/replica_*Ingress*.log"):
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if rid in line:
                        records.append(json.loads(line))
        time.sleep(0.2)
    access = [r for r in records if r.get("path") == "/models"]
    assert access, records
    record = access[0]
    assert record["request_id"] == rid and record["key_name"] == "tests"
    assert record["status"] == 200 and record["duration_ms"] >= 0
    assert record["deployment"].endswith("Ingress") and record["levelname"] == "INFO"
    for path in glob.glob(f"{logs}/*.log"):
        with open(path, encoding="utf-8", errors="replace") as f:
            assert api_key not in f.read(), path


def test_prometheus_metrics(client):
    """The service's own metrics reach Ray's Prometheus endpoint with their tags."""
    import re
    import urllib.request
    shot = client.post("/remove-background",
                       json={**SHOTGUN, "include_models": ["tiny", "tiny-pro"]})
    assert shot.status_code == 200
    assert client.post("/remove-background", json={"image": "!!"}).status_code == 400
    url = f"http://127.0.0.1:{os.environ['BGR_TEST_METRICS_PORT']}/metrics"
    wanted = {
        "latency": r'ray_bgremove_model_inference_seconds_bucket\{[^}]*model="tiny-pro"[^}]*'
                   r'pool="pro"[^}]*resolution="<=0.3MP"',
        "batch": r'ray_bgremove_model_batch_size_bucket\{[^}]*model="tiny"',
        "in_flight": r'ray_bgremove_model_in_flight\{[^}]*model="tiny"',
        "errors": r'ray_bgremove_errors_total\{[^}]*code="invalid_request"[^}]*family="type"'
                  r'[^}]*status="400"',
        "credits": r'ray_bgremove_credits_charged_total\{[^}]*operation="shotgun"',
        "jobs": r'ray_bgremove_jobs\{[^}]*kind="image"[^}]*state="completed"',
    }
    deadline = time.monotonic() + 30
    while True:
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        missing = [name for name, pattern in wanted.items() if not re.search(pattern, body)]
        if not missing:
            break
        assert time.monotonic() < deadline, f"not exported: {missing}"
        time.sleep(1)


def test_idempotent_retry_returns_the_job_whatever_the_balance(base_url, keys):
    name = f"idem-{time.monotonic_ns()}"
    _, secret = keys.create(name, credits=1)
    with new_client(base_url, secret) as c:
        body = {"image_url": "http://127.0.0.1:1/never.png"}
        first = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-7"})
        assert first.status_code == 201
        keys.add_credits(name, -1)  # spent meanwhile
        again = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-7"})
        assert again.status_code == 200 and again.json()["job_id"] == first.json()["job_id"]
        other = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-8"})
        assert other.status_code == 402


def test_a_video_job_the_balance_cannot_pay_is_refused_before_any_frame(base_url, keys):
    """/v1/jobs checks one second at submit (the length is not known yet); the worker then
    reads the clip's length and refuses, before processing, what the balance cannot pay:
    the job fails with the reason, nothing is charged."""
    from test_video_api import make_clip
    secret = make_key(keys, credits=2)
    with new_client(base_url, secret) as c:
        up = c.post("/api/upload", files={"file": ("c.mp4", make_clip(3.0), "video/mp4")})
        assert up.status_code == 201, up.text
        created = c.post("/v1/jobs", json={"upload_id": up.json()["upload_id"],
                                           "output_format": "webm"})
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        deadline = time.monotonic() + 90
        while (final := c.get(f"/v1/jobs/{job_id}").json())["status"] not in ("completed",
                                                                               "failed"):
            assert time.monotonic() < deadline, final
            time.sleep(0.3)
        assert final["status"] == "failed", final
        assert "Not enough credits" in str(final), final
        usage = c.get("/v1/usage").json()
    assert usage["balance"] == 2 and not usage["operations"]
