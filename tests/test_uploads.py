"""serve_app.uploads: streamed multipart uploads into the artifact store (spec 002 errors)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipelines.errors import InvalidRequest, ServiceError
from pipelines.media_types import sniff_media_type
from serve_app.core.artifacts import LocalArtifactStore
from serve_app.core.errors import FileTooLarge, InvalidFileType
from serve_app.errors import http_status
from serve_app.uploads import (
    ALLOWED_TYPES,
    UploadInfo,
    receive_upload,
    sanitize_filename,
)

BOUNDARY = "----bgremoveTestBoundary7MA4YWxkTrZu0gW"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
CHUNK = 64 * 1024


def _png(size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00\x00\x00\x08free" + bytes(500)
MOV = b"\x00\x00\x00\x14ftypqt  \x20\x05\x03\x00qt  " + b"\x00\x00\x00\x08wide" + bytes(300)
WEBM = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d") + bytes(100)
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04" + bytes(40)


class RecordingStore(LocalArtifactStore):
    """Records every write the upload makes (sizes, and how much body had been sent by then)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.opened: list[str] = []  # keys a writer was opened for
        self.writes: list[int] = []
        self.sent_at_write: list[int] = []
        self.sent = 0  # chunks the client's body generator has yielded so far

    @contextmanager
    def _recording(self, key: str) -> Iterator[BinaryIO]:
        with LocalArtifactStore.writer(self, key) as f:
            self.opened.append(key)
            store = self

            class Recorder(io.RawIOBase):
                def write(self, data) -> int:  # type: ignore[override]
                    store.writes.append(len(data))
                    store.sent_at_write.append(store.sent)
                    return f.write(data)

            yield Recorder()  # type: ignore[misc]

    def writer(self, key: str):  # type: ignore[override]
        return self._recording(key)


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(tmp_path / "artifacts")


def stored(store: LocalArtifactStore) -> list[str]:
    root = store.root
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def make_app(store: LocalArtifactStore, max_bytes: int) -> Starlette:
    async def upload(request: Request) -> JSONResponse:
        try:
            info = await receive_upload(request, store, max_bytes)
        except ServiceError as exc:
            status, code = http_status(exc)
            return JSONResponse(
                {"code": code, "message": exc.message, "details": exc.details},
                status_code=status,
            )
        return JSONResponse(dataclasses.asdict(info))

    return Starlette(routes=[Route("/api/upload", upload, methods=["POST"])])


def form(
    data: bytes,
    filename: str = "clip.bin",
    field: str = "file",
    fields: list[tuple[str, bytes]] | None = None,
    after: list[tuple[str, bytes]] | None = None,
    content_type: str = "application/octet-stream",
) -> bytes:
    def part(name: str, value: bytes, extra: str = "") -> bytes:
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n'
        return head.encode() + b"\r\n" + value + b"\r\n"

    body = b"".join(part(n, v) for n, v in fields or [])
    body += part(field, data, f'; filename="{filename}"\r\nContent-Type: {content_type}')
    body += b"".join(part(n, v) for n, v in after or [])
    return body + f"--{BOUNDARY}--\r\n".encode()


def post(
    app: Starlette,
    body: bytes | None = None,
    *,
    chunks: list[bytes] | None = None,
    headers: dict[str, str] | None = None,
    store: RecordingStore | None = None,
) -> httpx.Response:
    """POST to /api/upload; `chunks` sends an async generator body (chunked unless headers
    carry a Content-Length), counting what was yielded in `store.sent`."""

    async def gen() -> AsyncIterator[bytes]:
        for c in chunks or []:
            if store is not None:
                store.sent += 1
            yield c
            await asyncio.sleep(0)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            content = body if chunks is None else gen()
            h = {"content-type": MULTIPART, **(headers or {})}
            return await client.post("/api/upload", content=content, headers=h)

    return asyncio.run(go())


def split(body: bytes, size: int = CHUNK) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


# -- sniffing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image/jpeg"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (GIF, "image/gif"),
        (MP4, "video/mp4"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41", "video/mp4"),
        (MOV, "video/quicktime"),
        (b"\x00\x00\x00\x08wide\x00\x01\x00\x00mdat", "video/quicktime"),  # no ftyp box
        (WEBM, "video/webm"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "video/x-msvideo"),
        (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic", "image/heif"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "image/avif"),
        (b"\x00\x00\x00\x1cftyp3gp4\x00\x00\x00\x00isom3gp4", "video/3gpp"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"FLV\x01\x05\x00\x00\x00\x09", "video/x-flv"),
        (b"OggS\x00\x02" + bytes(8), "video/ogg"),
        (b"\x00\x00\x01\xba\x44\x00\x04", "video/mpeg"),
        (b"GET / HTTP/1.1\r\n", None),
        (b"hello, world\n" * 5, None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"\x89PN", None),  # truncated magic
        (b"", None),
    ],
)
def test_sniff_media_type(head: bytes, expected: str | None) -> None:
    assert sniff_media_type(head[:64]) == expected


def test_sanitize_filename() -> None:
    assert sanitize_filename(b"../../etc/passwd") == "passwd"
    assert sanitize_filename("C:\\Users\\me\\holiday.mov") == "holiday.mov"
    assert sanitize_filename(b"ok\x00na\x1bme\x7f.png") == "okname.png"
    assert sanitize_filename("caf\u00e9 \u2603.webm".encode()) == "caf\u00e9 \u2603.webm"
    assert sanitize_filename(b"\xff\xfe.png") == "\ufffd\ufffd.png"
    assert sanitize_filename(b"..") == sanitize_filename(b"a/.") == sanitize_filename(None) == ""
    long = sanitize_filename("x" * 400 + ".mp4")
    assert len(long) == 255 and long.endswith(".mp4")
    assert len(sanitize_filename("y" * 400)) == 255


# -- accepted uploads ----------------------------------------------------------------------------


def test_png_upload(store: RecordingStore) -> None:
    app = make_app(store, 1_000_000)
    r = post(app, form(PNG, filename="photo.png", content_type="video/mp4"))  # header ignored
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["media_type"] == "image/png" and info["kind"] == "image"
    assert info["size"] == len(PNG)
    assert info["filename"] == "photo.png"
    assert info["key"] == f"uploads/{info['upload_id']}/input"
    assert store.open(info["key"]).read() == PNG
    assert stored(store) == [info["key"]]


def test_upload_with_httpx_files_encoding(store: RecordingStore) -> None:
    """What real clients send: httpx builds the multipart body and boundary itself."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app(store, 1_000_000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(
                "/api/upload",
                data={"note": "hello", "model": "x"},
                files={"file": ("clip.mp4", MP4, "video/mp4")},
            )

    r = asyncio.run(go())
    assert r.status_code == 200, r.text
    assert r.json()["media_type"] == "video/mp4"
    assert store.open(r.json()["key"]).read() == MP4


@pytest.mark.parametrize(
    ("data", "media_type"), [(MP4, "video/mp4"), (MOV, "video/quicktime"), (WEBM, "video/webm")]
)
def test_video_uploads(store: RecordingStore, data: bytes, media_type: str) -> None:
    app = make_app(store, 1_000_000)
    r = post(app, form(data, filename="clip", fields=[("title", b"x" * 100)], after=[("a", b"b")]))
    assert r.status_code == 200, r.text
    info = r.json()
    assert (info["media_type"], info["kind"], info["size"]) == (media_type, "video", len(data))
    assert store.open(info["key"]).read() == data


def test_tiny_file_shorter_than_sniff_buffer(store: RecordingStore) -> None:
    data = b"\xff\xd8\xff\xdb" + bytes(10)  # 14 bytes: decided at the part's end
    r = post(make_app(store, 1_000_000), form(data))
    assert r.status_code == 200, r.text
    assert r.json()["media_type"] == "image/jpeg" and r.json()["size"] == 14


def test_receive_upload_returns_upload_info(store: RecordingStore) -> None:
    captured: list[UploadInfo] = []

    async def route(request: Request) -> JSONResponse:
        captured.append(await receive_upload(request, store, 10_000))
        return JSONResponse({})

    app = Starlette(routes=[Route("/api/upload", route, methods=["POST"])])
    assert post(app, form(PNG, filename="a.png")).status_code == 200
    (info,) = captured
    assert isinstance(info, UploadInfo) and info.kind == "image" and len(info.upload_id) == 36


def test_filename_sanitised(store: RecordingStore) -> None:
    r = post(make_app(store, 1_000_000), form(PNG, filename="../../etc/passwd"))
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "passwd"
    assert stored(store) == [r.json()["key"]]  # the key never depends on the filename


def test_upload_is_streamed(store: RecordingStore) -> None:
    """~20 MB sent in 64 KiB chunks reaches the store in many ~1 MiB writes, the first one
    long before the client has sent the whole body: never held whole in memory."""
    payload = MP4[:32] + bytes(range(256)) * (20 * 1024 * 1024 // 256)
    chunks = split(form(payload, filename="big.mp4"))
    r = post(make_app(store, 50 * 1024 * 1024), chunks=chunks, store=store)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == len(payload)
    assert len(store.writes) >= 15
    assert max(store.writes) <= 1024 * 1024 + CHUNK
    assert sum(store.writes) == len(payload)
    assert store.sent_at_write[0] < len(chunks) / 10  # writing started early ...
    assert store.sent_at_write[-2] < len(chunks)  # ... and went on while the body arrived
    with store.open(r.json()["key"]) as f:
        assert f.read() == payload


# -- refused uploads -----------------------------------------------------------------------------


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["message"]


@pytest.mark.parametrize(
    ("data", "received"),
    [(GIF, "image/gif"), (b"just some text, not media\n" * 4, "unknown"), (b"x", "unknown")],
)
def test_invalid_file_type(store: RecordingStore, data: bytes, received: str) -> None:
    r = post(make_app(store, 1_000_000), form(data, filename="x.png", content_type="image/png"))
    assert error(r) == (400, "Invalid file type")
    assert r.json()["code"] == "invalid_request"
    assert r.json()["details"] == {"received": received, "allowed": sorted(ALLOWED_TYPES)}
    assert stored(store) == [] and store.opened == []


def test_too_large_with_content_length_refused_unread(store: RecordingStore) -> None:
    limit = 100_000
    body = form(MP4 + bytes(200_000))
    chunks = split(body, 4096)
    r = post(
        make_app(store, limit),
        chunks=chunks,
        headers={"content-length": str(len(body))},
        store=store,
    )
    assert error(r) == (400, "File too large")
    assert r.json()["details"] == {"limit_bytes": limit}
    assert store.sent == 0  # refused before reading the body
    assert stored(store) == []


def test_too_large_chunked_aborts_early(store: RecordingStore) -> None:
    limit = 100_000
    chunks = split(form(MP4 + bytes(1_000_000)), 4096)
    r = post(make_app(store, limit), chunks=chunks, store=store)
    assert error(r) == (400, "File too large")
    assert r.json()["details"] == {"limit_bytes": limit}
    assert store.sent < 30 < len(chunks)  # stopped reading just past the limit
    assert store.opened  # a temp file had been started ...
    assert stored(store) == []  # ... and was removed


def test_size_limit_is_exact(store: RecordingStore) -> None:
    limit = 100_000
    app = make_app(store, limit)
    at_limit = MP4 + bytes(limit - len(MP4))
    r = post(app, form(at_limit))
    assert r.status_code == 200 and r.json()["size"] == limit
    # one byte more: its Content-Length is within the slack, so the streamed count refuses it
    r = post(app, form(at_limit + b"\x00"))
    assert error(r) == (400, "File too large")
    assert len(stored(store)) == 1


def test_missing_file_field(store: RecordingStore) -> None:
    body = form(PNG, field="image")
    r = post(make_app(store, 1_000_000), body)
    assert r.status_code == 400
    assert "Missing file" in r.json()["message"] and "'file'" in r.json()["message"]
    assert stored(store) == []
    # an empty form, too
    r = post(make_app(store, 1_000_000), f"--{BOUNDARY}--\r\n".encode())
    assert r.status_code == 400 and "Missing file" in r.json()["message"]


def test_empty_file(store: RecordingStore) -> None:
    r = post(make_app(store, 1_000_000), form(b""))
    assert error(r) == (400, "The uploaded file is empty")
    assert stored(store) == []


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "image/png", "multipart/form-data", "multipart/mixed; boundary=x"],
)
def test_wrong_content_type(store: RecordingStore, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {"content-type": ""}
    r = post(make_app(store, 1_000_000), form(PNG), headers=headers)
    assert error(r) == (400, "Expected multipart/form-data with a file field")
    assert stored(store) == []


def test_two_files_refused(store: RecordingStore) -> None:
    body = form(PNG, after=[("file", PNG)])
    r = post(make_app(store, 1_000_000), body)
    assert r.status_code == 400 and "exactly one file" in r.json()["message"]
    assert store.opened and stored(store) == []


def test_other_fields_are_bounded(store: RecordingStore) -> None:
    app = make_app(store, 10_000_000)
    r = post(app, form(PNG, after=[("notes", b"n" * 70_000)]))
    assert error(r) == (400, "Too much form data besides the file")
    assert stored(store) == []  # the file part was complete, but nothing is kept
    ok = post(app, form(PNG, fields=[("notes", b"n" * 30_000)]))
    assert ok.status_code == 200


def test_truncated_body(store: RecordingStore) -> None:
    body = form(PNG + bytes(5000))
    r = post(make_app(store, 1_000_000), body[:-200])  # no closing boundary
    assert error(r) == (400, "Incomplete multipart body (no closing boundary)")
    assert store.opened and stored(store) == []


def test_malformed_body(store: RecordingStore) -> None:
    r = post(make_app(store, 1_000_000), b"this is not multipart at all")
    assert error(r) == (400, "Malformed multipart body")
    assert stored(store) == []


def test_bad_content_length(store: RecordingStore) -> None:
    async def go():
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/upload",
            "headers": [(b"content-type", MULTIPART.encode()), (b"content-length", b"12x")],
        }

        async def receive():
            return {"type": "http.request", "body": form(PNG), "more_body": False}

        return await receive_upload(Request(scope, receive), store, 1_000_000)

    with pytest.raises(InvalidRequest, match="Content-Length"):
        asyncio.run(go())


def test_client_disconnect_leaves_nothing(store: RecordingStore) -> None:
    body = form(MP4 + bytes(3 * 1024 * 1024))
    messages = [
        {"type": "http.request", "body": c, "more_body": True} for c in split(body)[:40]
    ] + [{"type": "http.disconnect"}]

    async def go():
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/upload",
            "headers": [(b"content-type", MULTIPART.encode())],
        }

        async def receive():
            return messages.pop(0)

        return await receive_upload(Request(scope, receive), store, 100 * 1024 * 1024)

    with pytest.raises(ClientDisconnect):
        asyncio.run(go())
    assert store.opened and stored(store) == []


def test_error_classes() -> None:
    assert issubclass(FileTooLarge, InvalidRequest) and http_status(FileTooLarge("x"))[0] == 400
    assert issubclass(InvalidFileType, InvalidRequest)
    assert http_status(InvalidFileType("x")) == (400, "invalid_request")
