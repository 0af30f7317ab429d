"""pipelines.webhooks (and fetch.post_json) against a local threaded HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from pipelines import fetch, webhooks
from pipelines.errors import FetchError
from pipelines.fetch import FetchPolicy, post_json
from pipelines.webhooks import (
    MAX_ATTEMPTS,
    DeliveryResult,
    build_payload,
    deliver,
    next_retry_delay_s,
    retry_delay_s,
    verify_body_signature,
    verify_header_signature,
)
from serve_app.core.job_params import JobParams

SECRET = "s3cret-for-tests"
JOB = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
RESULTS = [{"model": "u2net", "url": "/v1/jobs/x/results/0.png", "width": 640, "score": 0.5,
            "label": "café ☕"}]
LOCAL = FetchPolicy.from_strings(1000, 2.0, 3, ["127.0.0.1/32"])
DEFAULT = FetchPolicy(max_bytes=1000, timeout_s=2.0)
BIG = 4 * 1024 * 1024


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict] = []  # method, path, headers, body
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        with self.lock:
            return [r["path"] for r in self.requests]


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client hung up
            pass

    def _record(self) -> str:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.requests.append({"method": self.command, "path": self.path,
                                         "headers": dict(self.headers), "body": body})
        return self.path

    def do_GET(self) -> None:
        self._record()
        self._send(200, b"target")

    def do_POST(self) -> None:
        path = self._record()
        if path == "/ok":
            self._send(200, b'{"received": true}', Content_Type="application/json")
        elif path == "/204":
            self._send(204)
        elif path in ("/500", "/503", "/408", "/429"):
            self._send(int(path[1:]), b"try later")
        elif path in ("/404", "/400", "/410"):
            self._send(int(path[1:]), b"no such hook")
        elif path == "/302":
            self._send(302, Location="/target")
        elif path == "/slow":
            time.sleep(1.5)
            self._send(200)
        elif path == "/big":  # a 4 MiB answer: only 64 KiB of it may be read
            self.send_response(200)
            self.send_header("Content-Length", str(BIG))
            self.end_headers()
            try:
                for _ in range(BIG // 65536):
                    self.wfile.write(b"x" * 65536)
            except OSError:
                pass
        else:
            self._send(404)


@pytest.fixture(scope="module")
def server():
    srv = Server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _reset(request):
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        with srv.lock:
            srv.requests.clear()


def send(url: str, payload: dict | None = None, secret: str | None = SECRET,
         policy: FetchPolicy = LOCAL, **kwargs) -> DeliveryResult:
    payload = payload or build_payload("job_completed", JOB, RESULTS, secret)
    return asyncio.run(deliver(url, payload, secret, policy, delivery_id="dlv-1", **kwargs))


# -- signatures ------------------------------------------------------------------------------


def test_body_signature_follows_the_documented_recipe():
    payload = build_payload("job_completed", JOB, RESULTS, SECRET)
    assert list(payload) == ["event", "job_id", "results", "signature"]
    unsigned = {k: v for k, v in payload.items() if k != "signature"}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()
    assert payload["signature"] == hmac.new(SECRET.encode(), canonical, hashlib.sha256).hexdigest()
    assert verify_body_signature(payload, SECRET)


def test_body_signature_fails_with_another_secret_or_a_tampered_payload():
    payload = build_payload("job_completed", JOB, RESULTS, SECRET)
    assert not verify_body_signature(payload, "another-secret")
    assert not verify_body_signature(payload, "")
    tampered = json.loads(json.dumps(payload))
    tampered["results"][0]["url"] = "https://evil.example/x.png"
    assert not verify_body_signature(tampered, SECRET)
    assert not verify_body_signature({**payload, "job_id": "other"}, SECRET)
    assert not verify_body_signature({**payload, "extra": 1}, SECRET)
    assert not verify_body_signature({**payload, "signature": payload["signature"].upper()},
                                     SECRET)
    assert not verify_body_signature({**payload, "signature": "ünicode"}, SECRET)
    assert not verify_body_signature({**payload, "signature": None}, SECRET)


def test_failed_event_with_extra_fields_is_signed_too():
    error = {"code": "processing_error", "message": "Every model failed."}
    payload = build_payload("job_failed", JOB, None, SECRET, error=error)
    assert payload["event"] == "job_failed" and payload["results"] is None
    assert payload["error"] == error
    assert verify_body_signature(payload, SECRET)
    assert not verify_body_signature({**payload, "error": None}, SECRET)


def test_no_secret_keeps_the_shape_with_a_null_signature():
    for secret in (None, ""):
        payload = build_payload("job_completed", JOB, RESULTS, secret)
        assert payload == {"event": "job_completed", "job_id": JOB, "results": RESULTS,
                           "signature": None}
        assert not verify_body_signature(payload, SECRET)


def test_build_payload_rejects_unknown_events_signature_keys_and_nan():
    with pytest.raises(ValueError):
        build_payload("job_started", JOB, [], SECRET)
    with pytest.raises(ValueError):
        build_payload("job_completed", JOB, [], SECRET, signature="forged")
    with pytest.raises(ValueError):
        build_payload("job_completed", JOB, [{"score": float("nan")}], SECRET)


def test_header_signature_covers_timestamp_and_raw_body():
    body = b'{"event":"job_completed"}'
    ts = str(int(time.time()))
    header = "sha256=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + body,
                                  hashlib.sha256).hexdigest()
    assert verify_header_signature(body, ts, header, SECRET)
    assert not verify_header_signature(body, ts, header, "another-secret")
    assert not verify_header_signature(body + b" ", ts, header, SECRET)
    assert not verify_header_signature(body, str(int(ts) + 1), header, SECRET, tolerance_s=None)
    assert not verify_header_signature(body, ts, header.removeprefix("sha256="), SECRET)
    assert not verify_header_signature(body, ts, "sha256=ü", SECRET)
    assert not verify_header_signature(body, "", header, SECRET)


def test_header_signature_rejects_stale_timestamps():
    body = b"{}"
    old = "1700000000"
    header = webhooks.header_signature(body, old, SECRET)
    assert not verify_header_signature(body, old, header, SECRET)  # years ago
    assert verify_header_signature(body, old, header, SECRET, now=1700000000 + 299)
    assert not verify_header_signature(body, old, header, SECRET, now=1700000000 + 301)
    assert not verify_header_signature(body, old, header, SECRET, now=1700000000 - 301)
    assert verify_header_signature(body, old, header, SECRET, tolerance_s=None)


# -- delivery against the local server -------------------------------------------------------


def test_delivery_on_200_sends_signed_body_and_headers(server):
    result = send(f"{server.base}/ok")
    assert result.ok and result.status_code == 200 and result.error is None
    assert not result.retryable and result.duration_ms >= 0
    (request,) = server.requests
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert request["method"] == "POST"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "bgremove-webhook/1"
    assert headers["x-webhook-event"] == "job_completed"
    assert headers["x-webhook-id"] == "dlv-1"
    assert headers["host"] == f"127.0.0.1:{server.server_address[1]}"
    ts = headers["x-webhook-timestamp"]
    assert abs(int(ts) - time.time()) < 60
    assert verify_header_signature(request["body"], ts, headers["x-webhook-signature"], SECRET)
    received = json.loads(request["body"])
    assert received["results"][0]["label"] == "café ☕"
    assert verify_body_signature(received, SECRET)
    assert request["body"] == webhooks.canonical_body(received)


def test_delivery_without_secret_sends_no_signature_header(server):
    result = send(f"{server.base}/204", secret=None)
    assert result.ok and result.status_code == 204
    (request,) = server.requests
    assert "x-webhook-signature" not in {k.lower() for k in request["headers"]}
    assert json.loads(request["body"])["signature"] is None


@pytest.mark.parametrize("status", [500, 503, 408, 429])
def test_server_errors_are_retryable(server, status):
    result = send(f"{server.base}/{status}")
    assert not result.ok and result.status_code == status and result.retryable
    assert str(status) in result.error and "try later" not in result.error


@pytest.mark.parametrize("status", [404, 400, 410])
def test_client_errors_are_not_retryable(server, status):
    result = send(f"{server.base}/{status}")
    assert not result.ok and result.status_code == status and not result.retryable


def test_redirect_is_a_failure_and_is_not_followed(server):
    result = send(f"{server.base}/302")
    assert not result.ok and result.status_code == 302 and not result.retryable
    assert "redirect" in result.error
    assert server.paths() == ["/302"]  # /target never hit


def test_slow_server_times_out_and_is_retryable(server):
    policy = FetchPolicy.from_strings(1000, 0.3, 0, ["127.0.0.1/32"])
    started = time.monotonic()
    result = send(f"{server.base}/slow", policy=policy)
    assert time.monotonic() - started < 1.2
    assert not result.ok and result.status_code is None and result.retryable
    assert "0.3 s" in result.error and 250 <= result.duration_ms < 1200


def test_connection_refused_is_retryable():
    closed = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = closed.server_address[1]
    closed.server_close()
    result = send(f"http://127.0.0.1:{port}/ok")
    assert not result.ok and result.status_code is None and result.retryable


def test_unresolvable_host_is_retryable(monkeypatch):
    async def resolve(host: str, port: int):
        raise OSError("temporary failure in name resolution")

    monkeypatch.setattr(fetch, "_resolve", resolve)
    result = send("https://hooks.example.test/x")
    assert not result.ok and result.retryable and "could not be resolved" in result.error


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "169.254.169.254", "10.0.0.1",
                                  "[::1]:{port}", "localhost:{port}"])
def test_default_policy_refuses_private_addresses_without_a_request(server, host):
    url = f"http://{host.format(port=server.server_address[1])}/ok"
    result = send(url, policy=DEFAULT)
    assert not result.ok and result.status_code is None and not result.retryable
    assert result.error.startswith("webhook_url resolves to a non-public address")
    assert server.requests == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x",
                                 "http://user:pw@127.0.0.1/ok", "not a url", "http:///x"])
def test_bad_urls_are_refused_and_not_retryable(server, url):
    result = send(url)
    assert not result.ok and not result.retryable and result.error.startswith("webhook_url")
    assert server.requests == []


def test_transport_crash_is_reported_not_raised():
    def handler(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("boom")

    async def resolve(host: str, port: int):
        return [ipaddress.ip_address("93.184.216.34")]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch, "_resolve", resolve)
        result = send("https://hooks.example.com/x", transport=httpx.MockTransport(handler))
    assert not result.ok and result.retryable and "RuntimeError" in result.error


# -- post_json: pinning, headers, response cap -----------------------------------------------


def test_post_is_pinned_to_the_validated_ip_with_host_and_sni(monkeypatch):
    seen: list[httpx.Request] = []

    async def resolve(host: str, port: int):
        return [ipaddress.ip_address("93.184.216.34")]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))  # streamed, like the network

    monkeypatch.setattr(fetch, "_resolve", resolve)
    status, body = asyncio.run(post_json(
        "https://hooks.example.com/in?x=1", b'{"a":1}',
        {"Host": "evil.example", "content-type": "application/json", "X-Extra": "1"}, DEFAULT,
        transport=httpx.MockTransport(handler)))
    assert (status, body) == (200, b"ok")
    (request,) = seen
    assert request.method == "POST" and request.content == b'{"a":1}'
    assert str(request.url) == "https://93.184.216.34/in?x=1"
    assert request.headers["Host"] == "hooks.example.com"
    assert request.headers.get_list("Content-Type") == ["application/json"]
    assert request.headers["X-Extra"] == "1"
    assert request.extensions.get("sni_hostname") == "hooks.example.com"
    assert "cookie" not in request.headers and "authorization" not in request.headers


def test_post_refuses_when_any_resolved_address_is_private(server, monkeypatch):
    async def resolve(host: str, port: int):
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")]

    monkeypatch.setattr(fetch, "_resolve", resolve)
    with pytest.raises(FetchError) as info:
        asyncio.run(post_json(f"http://mixed.example.test:{server.server_address[1]}/ok", b"{}",
                              {}, LOCAL))
    assert info.value.details == {"field": "webhook_url", "reason": "blocked_address",
                                  "host": "mixed.example.test", "address": "10.1.2.3"}
    assert server.requests == []


def test_post_returns_redirects_as_is_and_caps_the_response_body(server):
    status, body = asyncio.run(post_json(f"{server.base}/302", b"{}", {}, LOCAL))
    assert status == 302 and server.paths() == ["/302"]
    started = time.monotonic()
    status, body = asyncio.run(post_json(f"{server.base}/big", b"{}", {}, LOCAL))
    assert status == 200 and len(body) == 64 * 1024
    assert time.monotonic() - started < 2
    assert send(f"{server.base}/big").ok


# -- retry schedule --------------------------------------------------------------------------


def test_retry_delay_grows_exponentially_with_bounded_jitter():
    exact = [retry_delay_s(n, rng=_NoJitter()) for n in range(1, 7)]
    assert exact == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    rng = random.Random(7)
    for n in range(1, 12):
        nominal = min(300.0, 2.0 * 2 ** (n - 1))
        assert 0.9 * nominal <= retry_delay_s(n, rng=rng) <= nominal
    assert retry_delay_s(3, rng=random.Random(1)) == retry_delay_s(3, rng=random.Random(1))
    assert retry_delay_s(1, base=0.5, rng=_NoJitter()) == 0.5


def test_retry_delay_is_capped():
    assert retry_delay_s(9, rng=_NoJitter()) == 300.0  # 2 * 256 = 512 > cap
    assert retry_delay_s(10_000, rng=_NoJitter()) == 300.0  # no overflow
    assert retry_delay_s(5, cap=10.0, rng=_NoJitter()) == 10.0
    assert all(retry_delay_s(n) <= 300.0 for n in range(1, 40))
    with pytest.raises(ValueError):
        retry_delay_s(0)


def test_next_retry_delay_stops_when_done():
    failed = DeliveryResult(False, 500, "HTTP 500", 3, True)
    assert MAX_ATTEMPTS == 6
    assert next_retry_delay_s(failed, 1, rng=_NoJitter()) == 2.0
    assert next_retry_delay_s(failed, MAX_ATTEMPTS - 1, rng=_NoJitter()) == 32.0
    assert next_retry_delay_s(failed, MAX_ATTEMPTS) is None
    assert next_retry_delay_s(DeliveryResult(False, 404, "HTTP 404", 3, False), 1) is None
    assert next_retry_delay_s(DeliveryResult(True, 200, None, 3, False), 1) is None


class _NoJitter(random.Random):
    def random(self) -> float:
        return 0.0


def test_module_does_not_import_ray():
    source = Path(webhooks.__file__).read_text()
    assert "import ray" not in source and "from ray" not in source


# ---- refused webhooks are logged by the worker --------------------------------------------------


def test_webhook_refused_at_delivery_is_logged_with_the_job_id(tmp_path, monkeypatch, caplog):
    """A job whose webhook_url the delivery rules refuse (here: written straight into the
    store, as an older service version or a DNS change would leave it): the worker records the
    attempt and logs the job id and the reason."""
    import logging

    from deployments.job_runner import JobWorker
    from serve_app.core.job_store import JobStore
    from serve_app.core.settings import get_settings

    monkeypatch.setenv("BGR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BGR_JOB_POLL_S", "0.1")
    monkeypatch.delenv("BGR_URL_ALLOWED_NETWORKS", raising=False)
    monkeypatch.delenv("BGR_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    store = JobStore.from_settings(get_settings())
    job, _ = store.create(api="v1", kind="image", start=True,
                          params=JobParams(model="light", model_id="u2netp"),
                          webhook_url="http://127.0.0.2:9/hook")
    assert store.claim("w1", 30).job_id == job.job_id
    assert store.complete(job.job_id, "w1", "jobs/x/output.png", "image/png", 60)
    logger = logging.getLogger("ray.serve.bgremove")
    logger.addHandler(caplog.handler)
    worker = JobWorker(models={})
    try:
        deadline = time.monotonic() + 20
        while not store.webhooks.deliveries(job.job_id) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker._shutdown()
        logger.removeHandler(caplog.handler)
        get_settings.cache_clear()
    (delivery,) = store.webhooks.deliveries(job.job_id)
    assert not delivery["ok"] and "non-public address" in delivery["error"]
    line = next(r for r in caplog.records if "not delivered" in r.getMessage())
    assert job.job_id in line.getMessage() and "127.0.0.2" in line.getMessage()
    assert line.levelno == logging.WARNING
