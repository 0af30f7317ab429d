"""Uploads and downloads (spec 002): `/api/upload` streams a file to storage for a later job;
`/api/download/{id}` serves a completed job's output, with byte ranges, until it expires."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from pipelines.errors import InvalidRequest
from serve_app.core.errors import NotFound, RangeNotSatisfiable
from serve_app.core.job_store import COMPLETED
from serve_app.errors import render as render_error
from serve_app.platform import caller_id
from serve_app.schemas import UploadView
from serve_app.services import Svc
from serve_app.uploads import receive_upload

router = APIRouter()


@router.post("/api/upload", status_code=201, response_model=UploadView,
             summary="Upload an image or video (streamed to storage, up to 500 MB)")
async def upload(svc: Svc, request: Request) -> UploadView:
    info = await receive_upload(request, svc.artifacts, svc.settings.upload_max_bytes)
    try:
        await asyncio.to_thread(svc.jobs.uploads.add, info.upload_id, info.key, info.filename,
                                info.media_type, info.kind, info.size, caller_id(request))
    except Exception:
        await asyncio.to_thread(svc.artifacts.delete, info.key)  # no unrecorded upload
        raise
    return UploadView(upload_id=info.upload_id, filename=info.filename,
                      media_type=info.media_type, kind=info.kind, size_bytes=info.size)


@router.get("/api/download/{job_id}", summary="Download a completed job's output",
            description="Served as often as asked (byte ranges too) until `output_expires_at`.",
            responses={200: {"content": {"image/png": {}, "image/webp": {}, "video/webm": {},
                                         "video/mp4": {}, "video/quicktime": {}}},
                       206: {"description": "The requested byte range"}})
async def download(svc: Svc, job_id: str, request: Request):
    job = await svc.desk.find(request, job_id, None)
    if job is None:
        raise NotFound("Job not found")
    if job.state != COMPLETED:
        raise InvalidRequest("Job not completed", {"status": job.state})
    gone = NotFound("Output not found: it has expired.")
    expires = job.output_expires_at
    if expires is not None and expires <= datetime.now(UTC):
        raise gone

    def missing():
        raise gone

    try:
        return await svc.desk.output_response(
            job, missing=missing, download_name=f"{job.job_id}.{job.params.output_format}",
            one_shot=False, range_header=request.headers.get("range"))
    except RangeNotSatisfiable as exc:
        response = render_error(request, exc)
        response.headers["Content-Range"] = f"bytes */{(exc.details or {})['size']}"
        return response
