"""Load shedding in the ingress (serve_app.platform): past BGR_MAX_INFLIGHT_REQUESTS requests in
progress, the answer is an immediate 503 with Retry-After in the route family's shape."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

import serve_app.platform as platform
from serve_app.core.settings import Settings
from serve_app.errors import install_error_handlers


def test_requests_past_the_in_flight_limit_get_503_with_retry_after(monkeypatch):
    monkeypatch.setattr(platform, "get_settings",
                        lambda: Settings(auth_enabled=False, max_inflight_requests=2))
    api = FastAPI()
    install_error_handlers(api)
    api.add_middleware(platform.PlatformMiddleware)
    release = asyncio.Event()

    async def slow():
        await release.wait()
        return {"ok": True}

    for path in ("/v1/jobs/slow", "/remove-background", "/health", "/image/matte/v1"):
        api.add_api_route(path, slow, methods=["GET"])

    async def go():
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            held = [asyncio.create_task(c.get("/v1/jobs/slow")) for _ in range(2)]
            await asyncio.sleep(0.1)
            busy = await asyncio.gather(c.get("/v1/jobs/slow"), c.get("/remove-background"),
                                        c.get("/image/matte/v1"))
            health = asyncio.create_task(c.get("/health"))  # exempt: waits like the others
            await asyncio.sleep(0.1)
            release.set()
            done = await asyncio.gather(*held, health)
            after = await c.get("/v1/jobs/slow")
            return busy, done, after

    busy, done, after = asyncio.run(go())
    for r in busy:
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert busy[0].json()["error"]["code"] == "service_unavailable"
    assert busy[0].json()["error"]["message"].startswith("Server busy")
    assert busy[1].json()["error"]["type"] == "service_unavailable"
    assert busy[2].json() == {"message": busy[2].json()["message"]}
    assert [r.status_code for r in done] == [200, 200, 200]
    assert after.status_code == 200


def test_a_key_store_that_cannot_answer_is_a_503_not_a_500(monkeypatch):
    from sqlalchemy.exc import OperationalError

    from serve_app.core.keys import KeyStore

    def locked(self, secret):
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(platform, "get_settings", lambda: Settings(auth_enabled=True,
                                                                   auth_cache_s=0))
    monkeypatch.setattr(KeyStore, "authenticate", locked)
    monkeypatch.setattr(platform.PlatformMiddleware, "keys",
                        property(lambda self: KeyStore("sqlite://")))
    api = FastAPI()
    install_error_handlers(api)
    api.add_middleware(platform.PlatformMiddleware)
    api.add_api_route("/v1/jobs/x", lambda: {"ok": True}, methods=["GET"])

    async def go():
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/v1/jobs/x", headers={"X-Api-Key": "bgr_whatever"})

    resp = asyncio.run(go())
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert resp.json()["error"]["code"] == "service_unavailable"


def _app(monkeypatch, **settings) -> FastAPI:
    monkeypatch.setattr(platform, "get_settings", lambda: Settings(**settings))
    api = FastAPI()
    install_error_handlers(api)
    api.add_middleware(platform.PlatformMiddleware)
    api.add_api_route("/v1/jobs/x", lambda: {"ok": True}, methods=["GET"])
    api.add_api_route("/health", lambda: {"status": "healthy"}, methods=["GET"])
    return api


def _get(api: FastAPI, path: str, client: tuple[str, int]) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=api, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get(path)
    return asyncio.run(go())


def test_keys_off_answers_only_this_machine_unless_opened(monkeypatch):
    api = _app(monkeypatch, auth_enabled=False)
    assert _get(api, "/v1/jobs/x", ("127.0.0.1", 5000)).status_code == 200
    assert _get(api, "/v1/jobs/x", ("::1", 5000)).status_code == 200
    remote = _get(api, "/v1/jobs/x", ("203.0.113.7", 5000))
    assert remote.status_code == 401
    assert remote.json()["error"]["code"] == "invalid_api_key"
    assert "only its own machine" in remote.json()["error"]["message"]
    assert _get(api, "/health", ("203.0.113.7", 5000)).status_code == 200  # public stays public
    opened = _app(monkeypatch, auth_enabled=False, open_without_keys=True)
    assert _get(opened, "/v1/jobs/x", ("203.0.113.7", 5000)).status_code == 200


def test_a_burst_cannot_pass_the_in_flight_limit_while_keys_are_looked_up(monkeypatch):
    """Each request takes its slot before the (awaited) key lookup: with a limit of 2 and a
    slow key store, 6 requests at once give 2 answers and 4 immediate 503s."""
    async def slow_key_lookup(self, headers, state, extra, settings):
        await asyncio.sleep(0.2)  # the key store's round-trip
        return None

    monkeypatch.setattr(platform.PlatformMiddleware, "_check_key", slow_key_lookup)
    api = _app(monkeypatch, auth_enabled=True, max_inflight_requests=2, auth_cache_s=0)

    async def go():
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*(c.get("/v1/jobs/x", headers={"X-Api-Key": "bgr_k"})
                                          for _ in range(6)))

    codes = sorted(r.status_code for r in asyncio.run(go()))
    assert codes == [200, 200, 503, 503, 503, 503]

