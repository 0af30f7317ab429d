"""What the async routes (HD images, video, /v1/jobs, downloads) share: finding the caller's
job, the per-key job limit, poking the worker, copying uploads into the artifact store, and
streaming a job's output (whole, once; or repeatably with byte ranges).

Routes only write and read the durable job store (`serve_app.core.job_store`) and the artifact
store; the `JobWorker` deployment does the work.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray.serve.handle import DeploymentHandle
from starlette.background import BackgroundTask

from serve_app.core.artifacts import ArtifactStore
from serve_app.core.errors import RangeNotSatisfiable, RateLimited, ServiceUnavailable
from serve_app.core.job_store import Job, JobStore, TooManyJobs
from serve_app.core.settings import Settings
from serve_app.platform import caller, caller_id

_RANGE = re.compile(r"bytes\s*=\s*(\d*)\s*-\s*(\d*)", re.IGNORECASE)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_id(value: str) -> bool:
    """Job and upload ids are UUIDs; anything else (NUL, odd characters) is simply unknown."""
    return _UUID.fullmatch(value) is not None


def too_many_jobs(exc: TooManyJobs) -> RateLimited:
    return RateLimited(f"Too many jobs in progress: {exc.limit} allowed at once for this API "
                       "key; retry when one has finished.",
                       {"limit": exc.limit, "active": exc.active, "retry_after_s": 5})


def detail(status: int, message: str) -> JSONResponse:
    """Spec 000's async error body: {"detail": message}."""
    return JSONResponse({"detail": message}, status_code=status)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range (first, last; inclusive) a `Range` header asks of a `size`-byte file,
    or None for the whole file (no header, another unit, several ranges or bad syntax: RFC 9110
    lets a server ignore those). RangeNotSatisfiable when it selects no byte."""
    m = _RANGE.fullmatch(header.strip()) if header else None
    if m is None or not any(m.groups()):
        return None
    first, last = m.groups()
    unsatisfiable = RangeNotSatisfiable(f"Range not satisfiable: the file has {size} bytes.",
                                        {"size": size})
    if not first:  # a suffix: the last N bytes
        if int(last) == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - int(last)), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid, so ignored
    if start >= size:
        raise unsatisfiable
    return start, min(int(last), size - 1) if last else size - 1


@dataclass
class JobDesk:
    settings: Settings
    jobs: JobStore
    artifacts: ArtifactStore
    worker: DeploymentHandle | None  # None: this deployment runs no async jobs

    async def find(self, request: Request | None, job_id: str, api: str | None) -> Job | None:
        """The job if it exists, belongs to this API (`api`, None: any) and to the caller's key:
        another key's job is "not found", exactly like one that does not exist."""
        job = await asyncio.to_thread(self.jobs.get, job_id) if is_id(job_id) else None
        if job is None or (api is not None and job.api != api):
            return None
        return job if job.owner == caller_id(request) else None

    def limit(self, request: Request | None) -> tuple[str | None, int | None]:
        """The caller's key id and how many of its jobs may be in progress at once."""
        key = caller(request)
        if key is None:
            return None, None
        limit = key.max_concurrent_jobs
        return key.key_id, self.settings.max_concurrent_jobs if limit is None else limit

    async def earlier(self, owner: str | None, idempotency_key: str | None,
                      api: str) -> Job | None:
        """The job this owner's earlier create of `api` made with this Idempotency-Key (keys
        are per owner and per API): a retry of a create that went through gets that job back,
        whatever the limits now."""
        if idempotency_key is None:
            return None
        return await asyncio.to_thread(self.jobs.find_idempotent, owner, idempotency_key, api)

    def require_worker(self) -> None:
        if self.worker is None:
            raise ServiceUnavailable("Asynchronous processing is not enabled in this deployment.")

    def wake(self) -> None:
        if self.worker is not None:
            self.worker.wake.remote()  # fire and forget: the worker also polls

    def store_upload(self, src: IO[bytes], key: str) -> None:
        """Copy a spooled upload into the artifact store (atomically)."""
        src.seek(0)
        with self.artifacts.writer(key) as out:
            shutil.copyfileobj(src, out, 1024 * 1024)

    async def discard_inputs(self, job_id: str) -> None:
        await asyncio.to_thread(self.artifacts.delete_prefix, f"inputs/{job_id}/")

    async def output_response(self, job: Job, missing: Callable[[], Response],
                              download_name: str | None,
                              extra_headers: dict[str, str] | None = None,
                              one_shot: bool = True, range_header: str | None = None) -> Response:
        """`_output_response` off the event loop (opening the output is a GET on a bucket)."""
        return await asyncio.to_thread(self._output_response, job, missing, download_name,
                                       extra_headers, one_shot, range_header)

    def _output_response(self, job: Job, missing: Callable[[], Response],
                         download_name: str | None, extra_headers: dict[str, str] | None,
                         one_shot: bool, range_header: str | None) -> Response:
        """Stream the output. `one_shot` (the v1 image/video results): delete it once the whole
        file was sent (spec 000: "cleaned up after download"); the file is opened first, so a
        concurrent cleanup cannot turn this response into an error. Otherwise (/api/download)
        it stays until it expires, and a single `Range` is answered with 206."""
        try:
            f = self.artifacts.open(job.output_key) if job.output_key else None
        except (FileNotFoundError, ValueError):
            f = None
        if f is None:
            return missing()
        headers = {"Cache-Control": "no-cache", **(extra_headers or {})}
        if download_name:
            headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
        status, start, length = 200, 0, None
        if not one_shot:
            size = f.seek(0, os.SEEK_END)
            headers["Accept-Ranges"] = "bytes"
            try:
                span = byte_range(range_header, size)
            except RangeNotSatisfiable:
                f.close()
                raise
            if span is not None:
                start, end = span
                status, length = 206, end - start + 1
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            headers["Content-Length"] = str(size if length is None else length)
        sent_all = False

        def chunks():
            nonlocal sent_all
            with f:
                f.seek(start)
                left = length
                while left is None or left > 0:
                    chunk = f.read(1024 * 1024 if left is None else min(left, 1024 * 1024))
                    if not chunk:
                        break
                    if left is not None:
                        left -= len(chunk)
                    yield chunk
            sent_all = True

        def cleanup() -> None:
            if sent_all:
                key = self.jobs.drop_output(job.job_id)
                if key:
                    self.artifacts.delete(key)

        return StreamingResponse(chunks(), status_code=status, media_type=job.output_media_type,
                                 headers=headers,
                                 background=BackgroundTask(cleanup) if one_shot else None)
