"""API keys, request ids, rate limits and ownership against the real Ray Serve app (auth on)."""

from __future__ import annotations

import base64
import http.server
import os
import threading
import time

import httpx
import pytest

from conftest import disk_image, png_bytes
from serve_app.keys import KeyStore

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def keys(base_url) -> KeyStore:
    from serve_app.settings import Settings
    data_dir = os.environ["BGR_DATA_DIR"]
    return KeyStore(Settings(data_dir=data_dir).resolved_database_url())


def new_client(base_url: str, secret: str | None) -> httpx.Client:
    headers = {"X-Api-Key": secret} if secret is not None else {}
    return httpx.Client(base_url=base_url, timeout=60, headers=headers)


def make_key(keys: KeyStore, **limits) -> str:
    return keys.create(f"k-{time.monotonic_ns()}", **limits)[1]


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
