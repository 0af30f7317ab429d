"""The body-size cap every request is read under (serve_app.app.BodyLimitMiddleware): bodies over
their route family's limit are refused while being read, in that family's error shape, before a
form parser or spool file takes in more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import StreamingResponse

import serve_app.app as app_module
from serve_app.app import BodyLimitMiddleware
from serve_app.core.settings import Settings
from serve_app.errors import install_error_handlers
from serve_app.uploads import FORM_OVERHEAD_BYTES

LIMIT = 100_000
SETTINGS = Settings(upload_max_bytes=LIMIT, hd_max_upload_bytes=LIMIT, max_upload_bytes=LIMIT,
                    shotgun_max_bytes=LIMIT)
CHUNK = 4096


@pytest.fixture
def limited_app(monkeypatch) -> FastAPI:
    monkeypatch.setattr(app_module, "get_settings", lambda: SETTINGS)
    api = FastAPI()
    install_error_handlers(api)
    api.add_middleware(BodyLimitMiddleware)

    async def receive_file(video: Annotated[UploadFile, File()]):
        return {"size": len(await video.read())}

    async def receive_json(request: Request):
        return {"size": len(await request.body())}

    async def stream_out():
        async def parts():
            for _ in range(5):
                yield b"0123456789"
                await asyncio.sleep(0)
        return StreamingResponse(parts(), media_type="video/mp4")

    for path in ("/video/submit/v1", "/image/hd/submit/v1", "/image/matte/v1", "/v1/jobs"):
        api.add_api_route(path, receive_file, methods=["POST"])
    api.add_api_route("/remove-background", receive_json, methods=["POST"])
    api.add_api_route("/video/result/x", stream_out, methods=["GET"])
    return api


def multipart(size: int) -> tuple[bytes, str]:
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="c.mp4"\r\n'
            f"Content-Type: video/mp4\r\n\r\n").encode() + bytes(size) + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def send(app: FastAPI, path: str, body: bytes, content_type: str, *, declare: bool,
         root_path: str = ""):
    """POST `body` in 4 KiB chunks; returns the response and how many chunks were pulled."""
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for i in range(0, len(body), CHUNK):
            pulled += 1
            yield body[i:i + CHUNK]
            await asyncio.sleep(0)

    async def go() -> httpx.Response:
        headers = {"content-type": content_type}
        if declare:
            headers["content-length"] = str(len(body))
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post(root_path + path, content=chunks(), headers=headers)

    return asyncio.run(go()), pulled


@pytest.mark.parametrize("path, status, body", [
    ("/video/submit/v1", 400, {"detail": "File too large"}),      # spec 000, video
    ("/image/hd/submit/v1", 413, {"detail": f"Image file is larger than {LIMIT} bytes."}),
    ("/image/matte/v1", 413, {"message": f"Image file is larger than {LIMIT} bytes."}),
])
@pytest.mark.parametrize("declare", [True, False])
def test_oversized_uploads_are_cut_off_in_the_familys_shape(limited_app, path, status, body,
                                                            declare):
    data, ctype = multipart(10 * LIMIT)
    resp, pulled = send(limited_app, path, data, ctype, declare=declare)
    assert (resp.status_code, resp.json()) == (status, body)
    total = -(-len(data) // CHUNK)
    if declare:  # refused on the declared length: nothing read
        assert pulled <= 1
    else:  # read only up to the limit
        assert pulled <= (LIMIT + FORM_OVERHEAD_BYTES) // CHUNK + 2 < total


def test_v1_family_gets_the_error_code_shape(limited_app):
    data, ctype = multipart(10 * LIMIT)
    resp, _ = send(limited_app, "/v1/jobs", data, ctype, declare=False)
    err = resp.json()["error"]
    assert resp.status_code == 413 and err["code"] == "payload_too_large"
    assert err["message"].startswith("Request body is larger than") and err["request_id"]


def test_shotgun_family_and_bodies_within_the_limit_pass(limited_app):
    limit = LIMIT * 4 // 3 + FORM_OVERHEAD_BYTES
    resp, _ = send(limited_app, "/remove-background", b"x" * (limit + 1), "application/json",
                   declare=False)
    assert resp.status_code == 413
    assert resp.json()["error"]["type"] == "image_too_large"
    assert resp.json()["error"]["details"] == {"limit_bytes": limit}
    resp, _ = send(limited_app, "/remove-background", b"x" * limit, "application/json",
                   declare=True)
    assert resp.status_code == 200 and resp.json() == {"size": limit}
    data, ctype = multipart(LIMIT)  # exactly the file limit, plus multipart framing
    resp, _ = send(limited_app, "/video/submit/v1", data, ctype, declare=True)
    assert resp.status_code == 200 and resp.json() == {"size": LIMIT}


def test_limits_follow_the_family_below_a_route_prefix(limited_app):
    """Serve keeps an app's route prefix in the path (and in root_path): /bgr/video/... is
    still the video family, with the video limit."""
    data, ctype = multipart(LIMIT)
    resp, _ = send(limited_app, "/video/submit/v1", data, ctype, declare=True, root_path="/bgr")
    assert resp.status_code == 200 and resp.json() == {"size": LIMIT}
    data, ctype = multipart(2 * LIMIT)
    resp, _ = send(limited_app, "/video/submit/v1", data, ctype, declare=False, root_path="/bgr")
    assert (resp.status_code, resp.json()) == (400, {"detail": "File too large"})


def test_a_bogus_content_length_does_not_break_a_streamed_response(limited_app):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limited_app),
                                     base_url="http://t") as client:
            return await client.get("/video/result/x",
                                    headers={"content-length": "999999999999"})
    resp = asyncio.run(go())
    assert resp.status_code == 400 and resp.json() == {"detail": "File too large"}
