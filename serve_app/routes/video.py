"""Video API v1 (spec 000): submit a clip, poll its progress, download the result.

The clip is stored and probed here (a clear 400 for anything that is not a readable video),
the background image, if any, is fetched and checked here; the `JobWorker` deployment does the
rest (`pipelines.render.render_video`).
"""

import asyncio
import logging
import re
import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Header, Request, UploadFile
from fastapi.responses import JSONResponse

from pipelines import video
from pipelines.auto import AUTO
from pipelines.errors import InvalidImage, InvalidRequest, ServiceError
from pipelines.fetch import fetch_url
from pipelines.images import decode_image
from pipelines.render import check_video_pixels
from serve_app.core.job_params import JobParams
from serve_app.core.job_store import COMPLETED, FAILED, TooManyJobs
from serve_app.errors import dependency_failure
from serve_app.job_desk import detail, too_many_jobs
from serve_app.services import Services, Svc

log = logging.getLogger("ray.serve.bgremove")
router = APIRouter()
_RGB = re.compile(r"\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*")
BG_COLOR_MESSAGE = "bg_color must be in format 'R,G,B' (e.g., '255,0,0')"


@router.post("/video/submit/v1", status_code=202,
          summary="Submit a video (the first seconds are processed, see the warning)")
async def video_submit(svc: Svc, request: Request,
                       video_file: Annotated[UploadFile, File(alias="video")],
                       bg_color: Annotated[str | None, Form()] = None,
                       bg_image_url: Annotated[str | None, Form()] = None,
                       model: Annotated[str | None, Form()] = None,
                       output_format: Annotated[str | None, Form()] = None,
                       idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    if svc.desk.worker is None:
        return detail(503, "Asynchronous processing is not enabled in this deployment.")
    settings = svc.settings
    if video_file.size is not None and video_file.size > settings.upload_max_bytes:
        return detail(400, "File too large")
    background = {"type": "transparent"}
    if bg_color:  # bg_color wins over bg_image_url
        m = _RGB.fullmatch(bg_color)
        if m is None or any(int(v) > 255 for v in m.groups()):
            return detail(400, BG_COLOR_MESSAGE)
        background = {"type": "color", "color": ",".join(m.groups())}
    transparent = background["type"] == "transparent" and not bg_image_url
    fmt = output_format or ("webm" if transparent else "mp4")
    if fmt not in ("webm", "mp4", "mov"):
        return detail(400, "output_format must be webm, mp4 or mov")
    if fmt == "mp4" and transparent:
        return detail(400, "mp4 cannot carry transparency: give bg_color or bg_image_url, "
                            "or use webm or mov")
    model_id = model or svc.models.default_model
    if model_id not in svc.models.handles and (model_id != AUTO or not svc.models.auto_models):
        return detail(400, f"Model '{model_id}' is not available.")

    owner, max_active = svc.desk.limit(request)
    limit = settings.video_max_duration_s
    if (earlier := await svc.desk.earlier(owner, idempotency_key, "video")) is not None:
        return _submitted(earlier.job_id, earlier.params.original_duration_s or 0.0, limit)
    job_id = str(uuid.uuid4())
    key = f"inputs/{job_id}/input"
    try:
        # probed from the upload's own spool, before anything is stored (or sent to a bucket)
        info = await asyncio.to_thread(video.probe, video_file.file)
        await asyncio.to_thread(svc.desk.store_upload, video_file.file, key)
    except InvalidRequest as exc:  # "File must be a video" or the decoder's reason
        await svc.desk.discard_inputs(job_id)
        return detail(400, exc.message)
    except Exception as exc:  # noqa: BLE001 - the documented 500 body
        await svc.desk.discard_inputs(job_id)
        mapped = dependency_failure(exc, "Failed to submit video: ")
        if mapped is not None:  # storage full or not writable (507)
            raise mapped from None
        log.exception("video submit failed")
        return detail(500, f"Failed to submit video: {type(exc).__name__}")

    try:
        check_video_pixels(*info.display_size, settings.video_max_pixels, "Video frames")
    except InvalidRequest as exc:
        await svc.desk.discard_inputs(job_id)
        return detail(400, exc.message)
    bg_key = None
    if bg_image_url and not bg_color:
        problem = await _fetch_background(svc, bg_image_url, f"inputs/{job_id}/background")
        if problem is not None:
            await svc.desk.discard_inputs(job_id)
            return detail(400, problem)
        bg_key = f"inputs/{job_id}/background"

    seconds = video.processed_duration(info.duration_s, limit)
    try:  # charged per processed second when the job completes
        await svc.credits.require(request, round(seconds, 2) * settings.price_video_second)
    except ServiceError:
        await svc.desk.discard_inputs(job_id)
        raise
    params = JobParams(model_id=model_id, output_format=fmt, background=background,
                       bg_image_key=bg_key, max_duration_s=limit,
                       original_duration_s=info.duration_s)
    try:
        job, created = await asyncio.to_thread(
            svc.jobs.create, api="video", kind="video", job_id=job_id, input_key=key,
            start=True, params=params, owner=owner, max_active=max_active,
            idempotency_key=idempotency_key)
    except TooManyJobs as exc:
        await svc.desk.discard_inputs(job_id)
        raise too_many_jobs(exc) from None
    except Exception as exc:
        await svc.desk.discard_inputs(job_id)
        mapped = dependency_failure(exc, "Failed to submit video: ")
        if mapped is not None:  # the job database is down (503)
            raise mapped from None
        raise
    if not created:  # a concurrent retry with the same key won: its job is the one
        await svc.desk.discard_inputs(job_id)
        return _submitted(job.job_id, job.params.original_duration_s or 0.0, limit)
    svc.desk.wake()
    return _submitted(job_id, info.duration_s, limit)


def _submitted(job_id: str, duration_s: float, limit: float) -> JSONResponse:
    body = {"message": "Video submitted for processing", "uuid": job_id,
            "status": "processing", "duration": video.format_duration(duration_s)}
    if video.is_trimmed(duration_s, limit):
        body["warning"] = video.submit_trim_warning(duration_s, limit)
        body["processed_duration"] = video.format_limit(limit)
    return JSONResponse(body, status_code=202)

async def _fetch_background(svc: Services, url: str, key: str) -> str | None:
    s = svc.settings
    try:
        data = await fetch_url(url, s.fetch_policy(s.hd_max_upload_bytes))
    except ServiceError as exc:
        return f"Failed to download background image: {exc.message}"
    try:
        await asyncio.to_thread(decode_image, data, s.hd_max_pixels)
    except (InvalidImage, InvalidRequest):
        return "URL must point to an image file"
    await asyncio.to_thread(svc.artifacts.put_bytes, key, data)
    return None

@router.get("/video/result/{uuid}", summary="Progress (202) or the processed video (200)",
         responses={200: {"content": {"video/webm": {}, "video/mp4": {}}}})
async def video_result(svc: Svc, uuid: str, request: Request):
    job = await svc.desk.find(request, uuid, "video")
    if job is None:
        return JSONResponse({"message": "Task not found", "status": "not_found"},
                            status_code=404)
    if job.state == FAILED:  # the client's input: 422 with the reason; ours: spec 000's 500
        if job.error_kind == "input":
            return JSONResponse({"message": f"Video processing failed: {job.error}",
                                 "uuid": uuid, "status": "failed"}, status_code=422)
        return JSONResponse({"message": "Video processing failed", "uuid": uuid,
                             "status": "failed"}, status_code=500)
    if job.state != COMPLETED:
        body = {"message": "Video is still processing", "uuid": uuid, "status": "processing"}
        progress = await asyncio.to_thread(svc.jobs.get_progress, uuid)
        if progress is not None:
            done, total = progress  # total None: the clip states no length
            body |= {"current_frame": done, "total_frames": total,
                     "progress_percentage": (None if total is None
                                             else round(100.0 * done / max(total, 1), 1))}
        return JSONResponse(body, status_code=202)
    fmt = job.params.output_format
    original, limit = job.params.original_duration_s, job.params.max_duration_s
    public = svc.settings.artifacts_public_url
    if public and job.output_key:  # the "upload_link" form: the store serves the file
        body = {"message": "Video processing completed successfully", "uuid": uuid,
                "status": "success",
                "upload_link": f"{public.rstrip('/')}/{quote(job.output_key)}"}
        if video.is_trimmed(original, limit):
            body |= {"warning": video.result_trim_warning(original, limit),
                     "original_duration": video.format_duration(original),
                     "processed_duration": video.format_duration(
                         video.processed_duration(original, limit))}
        return JSONResponse(body)
    # exactly as spec 000 writes it (unquoted: the name is a uuid and an extension)
    headers = {"Content-Disposition": f"attachment; filename=processed_{uuid}.{fmt}",
               "X-Model": job.model_used}
    if video.is_trimmed(original, limit):
        headers |= {"X-Video-Warning": video.header_trim_warning(original, limit),
                   "X-Original-Duration": video.format_duration(original),
                   "X-Processed-Duration": video.format_duration(
                       video.processed_duration(original, limit))}
    return await svc.desk.output_response(
        job, missing=lambda: detail(404, "Processed video file not found"),
        download_name=None, extra_headers=headers)

