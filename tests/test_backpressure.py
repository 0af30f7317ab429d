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
