"""Streamed multipart uploads (`POST /api/upload`, spec 002) into the artifact store.

The body is parsed as it arrives with python-multipart's streaming parser: the `file` part goes
chunk by chunk (batched to ~1 MiB, written from a worker thread) into `store.writer(key)`, so an
upload of up to `upload_max_bytes` (500 MB) is never held in memory. Its type is sniffed from the
first bytes, never taken from the client's header. Any error (too large, wrong type, malformed or
truncated body, client gone) leaves nothing under the key: the writer is atomic.

Errors follow spec 002: 400 "File too large" (`FileTooLarge`, not 413) and 400 "Invalid file
type" (`InvalidFileType`); other refusals are plain `InvalidRequest`s.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import anyio
import anyio.to_thread

from pipelines.errors import InvalidRequest
from pipelines.media_types import SNIFF_BYTES, sniff_media_type
from serve_app.core.errors import FileTooLarge, InvalidFileType

try:  # python-multipart >= 0.0.13 (the old `multipart` name is a deprecated shim there)
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
except ImportError:  # pragma: no cover - python-multipart < 0.0.13
    from multipart.exceptions import FormParserError  # type: ignore[no-redef]
    from multipart.multipart import (  # type: ignore[no-redef]
        MultipartParser,
        MultipartState,
        parse_options_header,
    )

if TYPE_CHECKING:
    from starlette.requests import Request

    from serve_app.core.artifacts import ArtifactStore

FILE_FIELD = "file"
ALLOWED_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/webp", "video/mp4", "video/quicktime", "video/webm"}
)
IMAGE_TYPES = frozenset(t for t in ALLOWED_TYPES if t.startswith("image/"))
# Slack for everything that is not the file's bytes: boundaries, part headers, other fields.
# A Content-Length above max_bytes + this is refused unread, and so is a body that grows past it;
# part headers plus other fields' values together may not exceed it either.
FORM_OVERHEAD_BYTES = 64 * 1024
WRITE_BATCH_BYTES = 1024 * 1024  # one worker-thread write per ~1 MiB received
MAX_FILENAME_CHARS = 255

_NOT_MULTIPART = "Expected multipart/form-data with a file field"


@dataclass(frozen=True)
class UploadInfo:
    upload_id: str  # uuid4
    key: str  # artifact key, "uploads/<upload_id>/input"
    filename: str  # sanitised client filename (basename, <= 255 chars, may be "")
    media_type: str  # sniffed from the first bytes, not the client's header
    kind: str  # "image" | "video"
    size: int


def upload_key(upload_id: str) -> str:
    return f"uploads/{upload_id}/input"


# -- sniffing ------------------------------------------------------------------------------------

def sanitize_filename(raw: bytes | str | None) -> str:
    """The client's filename reduced to a printable basename of at most 255 characters ("" when
    nothing usable is left). Only ever used as a label, never as a path."""
    if not raw:
        return ""
    name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in (".", ".."):
        return ""
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and len(ext) <= 16:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name


# -- receiving -----------------------------------------------------------------------------------


def _boundary(content_type: str | None) -> bytes:
    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary", b"")
    if ctype != b"multipart/form-data" or not boundary:
        raise InvalidRequest(_NOT_MULTIPART, {"received": (content_type or "")[:100]})
    return boundary


class _Receiver:
    """Turns parser events into a stored file. Events are queued by the (synchronous) parser
    callbacks and handled after each `write`, so disk writes can be awaited in a thread."""

    def __init__(self, store: ArtifactStore, key: str, max_bytes: int) -> None:
        self.store = store
        self.key = key
        self.max_bytes = max_bytes
        self.events: list[tuple[str, bytes | None]] = []
        # current part
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.in_file = False
        # totals
        self.overhead = 0
        self.file_seen = False
        self.file_done = False
        self.filename = ""
        self.size = 0
        self.head: bytearray | None = bytearray()  # until the type is decided
        self.media_type: str | None = None
        self.pending: list[bytes] = []
        self.pending_len = 0
        self.cm: AbstractContextManager[BinaryIO] | None = None
        self.f: BinaryIO | None = None

    def callbacks(self) -> dict:
        def event(name: str):
            return lambda: self.events.append((name, None))

        def data_event(name: str):
            return lambda data, start, end: self.events.append((name, data[start:end]))

        return {
            "on_part_begin": event("part_begin"),
            "on_header_field": data_event("header_field"),
            "on_header_value": data_event("header_value"),
            "on_header_end": event("header_end"),
            "on_headers_finished": event("headers_finished"),
            "on_part_data": data_event("part_data"),
            "on_part_end": event("part_end"),
        }

    async def process(self) -> None:
        events, self.events = self.events, []
        for name, data in events:
            if name == "part_data":
                assert data is not None
                if self.in_file:
                    await self._file_data(data)
                else:
                    self._count_overhead(len(data))
            elif name == "header_field":
                assert data is not None
                self.header_field += data
                self._count_overhead(len(data))
            elif name == "header_value":
                assert data is not None
                self.header_value += data
                self._count_overhead(len(data))
            elif name == "header_end":
                self.headers.append((bytes(self.header_field).lower(), bytes(self.header_value)))
                self.header_field.clear()
                self.header_value.clear()
            elif name == "headers_finished":
                self._start_part()
            elif name == "part_end":
                if self.in_file:
                    await self._file_end()
                self.in_file = False
            elif name == "part_begin":
                self.headers = []

    def _count_overhead(self, n: int) -> None:
        self.overhead += n
        if self.overhead > FORM_OVERHEAD_BYTES:
            raise InvalidRequest(
                "Too much form data besides the file",
                {"limit_bytes": FORM_OVERHEAD_BYTES},
            )

    def _start_part(self) -> None:
        disposition = dict(self.headers).get(b"content-disposition", b"")
        _, params = parse_options_header(disposition.decode("latin-1"))
        if params.get(b"name") != FILE_FIELD.encode():
            return
        if self.file_seen:
            raise InvalidRequest("Send exactly one file, in the field 'file'", {"field": "file"})
        self.file_seen = True
        self.in_file = True
        self.filename = sanitize_filename(params.get(b"filename"))

    async def _file_data(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise FileTooLarge("File too large", {"limit_bytes": self.max_bytes})
        if self.head is not None:
            self.head += data
            if len(self.head) < SNIFF_BYTES:
                return
            data = bytes(self.head)
            await self._decide_type()
        self.pending.append(data)
        self.pending_len += len(data)
        if self.pending_len >= WRITE_BATCH_BYTES:
            await self._flush()

    async def _file_end(self) -> None:
        self.file_done = True
        if self.head is not None:
            if not self.head:
                raise InvalidRequest("The uploaded file is empty", {"field": "file"})
            self.pending.append(bytes(self.head))
            self.pending_len += len(self.head)
            await self._decide_type()
        await self._flush()

    async def _decide_type(self) -> None:
        assert self.head is not None
        media_type = sniff_media_type(bytes(self.head[:SNIFF_BYTES]))
        self.head = None
        if media_type not in ALLOWED_TYPES:
            raise InvalidFileType(
                "Invalid file type",
                {"received": media_type or "unknown", "allowed": sorted(ALLOWED_TYPES)},
            )
        self.media_type = media_type
        cm = self.store.writer(self.key)
        self.f = await anyio.to_thread.run_sync(cm.__enter__)
        self.cm = cm

    async def _flush(self) -> None:
        if not self.pending:
            return
        data = b"".join(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending, self.pending_len = [], 0
        assert self.f is not None
        await anyio.to_thread.run_sync(self.f.write, data)

    async def close(self, exc: BaseException | None) -> None:
        """Commit the artifact (exc None) or discard what was written."""
        cm, self.cm = self.cm, None
        if cm is None:
            return
        if exc is None:
            await anyio.to_thread.run_sync(cm.__exit__, None, None, None)
        else:
            # Shielded: on a cancelled request the cleanup must still run.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(cm.__exit__, type(exc), exc, exc.__traceback__)


async def receive_upload(request: Request, store: ArtifactStore, max_bytes: int) -> UploadInfo:
    """Stream the multipart body's `file` part into `uploads/<uuid>/input`; other fields are
    ignored. Raises `InvalidRequest` (all 400) subclasses; on any error nothing is stored."""
    boundary = _boundary(request.headers.get("content-type"))
    max_body = max_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_len = int(declared)
        except ValueError:
            raise InvalidRequest("Invalid Content-Length header") from None
        if declared_len > max_body:
            raise FileTooLarge("File too large", {"limit_bytes": max_bytes})

    upload_id = str(uuid.uuid4())
    key = upload_key(upload_id)
    receiver = _Receiver(store, key, max_bytes)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
    except FormParserError:  # e.g. a boundary longer than the parser accepts
        raise InvalidRequest(_NOT_MULTIPART) from None

    try:
        received = 0
        async for chunk in request.stream():
            if not chunk:
                continue
            received += len(chunk)
            if received > max_body:
                raise FileTooLarge("File too large", {"limit_bytes": max_bytes})
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise InvalidRequest("Malformed multipart body", {"reason": str(exc)}) from None
            await receiver.process()
        if parser.state != MultipartState.END:
            raise InvalidRequest("Incomplete multipart body (no closing boundary)")
        if not receiver.file_seen:
            raise InvalidRequest(
                "Missing file: send it as multipart/form-data field 'file'", {"field": "file"}
            )
        assert receiver.file_done and receiver.media_type is not None
    except BaseException as exc:
        await receiver.close(exc)
        raise
    await receiver.close(None)

    media_type = receiver.media_type
    return UploadInfo(
        upload_id=upload_id,
        key=key,
        filename=receiver.filename,
        media_type=media_type,
        kind="image" if media_type in IMAGE_TYPES else "video",
        size=receiver.size,
    )
