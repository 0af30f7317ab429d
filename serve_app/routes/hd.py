"""HD images (spec 000): submit an image of any size, poll, download the PNG once.

The image's header is checked here (format, pixel count) and the file stored; the `JobWorker`
deployment cuts it out (`pipelines.render.render_image_job`), with the output options
(docs/output-options.md) when any is sent.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import IO, Annotated

from fastapi import APIRouter, File, Form, Header, Request, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image

from pipelines.auto import AUTO
from pipelines.render import JOB_INPUT_FORMATS as HD_FORMATS
from serve_app.core.job_params import JobParams
from serve_app.core.job_store import COMPLETED, FAILED, TooManyJobs
from serve_app.errors import dependency_failure
from serve_app.job_desk import detail, too_many_jobs
from serve_app.schemas import HdOptions, HdProcessing, HdSubmitted
from serve_app.services import Services, Svc

log = logging.getLogger("ray.serve.bgremove")
router = APIRouter()


def _store_input(svc: Services, src: IO[bytes], key: str) -> str | None:
    """Check the upload's header (format, pixel count) and copy it into the artifact store;
    returns the 400 message when it is not an acceptable image."""
    src.seek(0)
    try:
        with Image.open(src) as im:
            fmt, (width, height) = im.format, im.size
    except Exception:  # noqa: BLE001 - PIL raises many types for junk
        return "Invalid image file"
    if fmt not in HD_FORMATS or width <= 0 or height <= 0:
        return "Invalid image file"
    limit = svc.settings.hd_max_pixels
    if width * height > limit:
        return f"Image too large: {width}x{height} is over the HD limit of {limit:,} pixels"
    svc.desk.store_upload(src, key)
    return None


@router.post("/image/hd/submit/v1", status_code=202, response_model=HdSubmitted,
             summary="Submit an image of any size for asynchronous background removal")
async def hd_submit(svc: Svc, request: Request, image: Annotated[UploadFile, File()],
                    options: Annotated[HdOptions, Form()],
                    idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    limit = svc.settings.hd_max_upload_bytes  # the body as a whole: BodyLimitMiddleware
    if image.size is not None and image.size > limit:
        return detail(413, f"Image file is larger than {limit} bytes.")
    if svc.desk.worker is None:
        return detail(503, "Asynchronous processing is not enabled in this deployment.")
    model_id = options.model or svc.models.default_model
    if model_id not in svc.models.handles and (model_id != AUTO or not svc.models.auto_models):
        return detail(400, f"Model '{model_id}' is not available.")
    owner, max_active = svc.desk.limit(request)
    if (earlier := await svc.desk.earlier(owner, idempotency_key, "hd")) is not None:
        return HdSubmitted(uuid=earlier.job_id)
    await svc.credits.require(request, svc.settings.price_image)  # charged on completion
    job_id = str(uuid.uuid4())
    key = f"inputs/{job_id}/input"
    try:
        problem = await asyncio.to_thread(_store_input, svc, image.file, key)
        if problem is not None:
            return detail(400, problem)
        job, created = await asyncio.to_thread(
            svc.jobs.create, api="hd", kind="image", job_id=job_id, input_key=key, start=True,
            params=JobParams(model_id=model_id, output_format=options.format,
                             options=options.output_only() if options.changed_fields() else None),
            owner=owner, max_active=max_active, idempotency_key=idempotency_key)
        if not created:  # a concurrent retry with the same key won: its job is the one
            await asyncio.to_thread(svc.artifacts.delete, key)
            return HdSubmitted(uuid=job.job_id)
    except TooManyJobs as exc:
        await asyncio.to_thread(svc.artifacts.delete, key)
        raise too_many_jobs(exc) from None
    except Exception as exc:  # noqa: BLE001 - the documented 500 body
        await asyncio.to_thread(svc.artifacts.delete, key)
        mapped = dependency_failure(exc, "Failed to submit image: ")
        if mapped is not None:  # database down (503) or storage full (507)
            raise mapped from None
        log.exception("HD submit failed")
        return detail(500, f"Failed to submit image: {type(exc).__name__}")
    svc.desk.wake()
    return HdSubmitted(uuid=job_id)


@router.get("/image/hd/result/{uuid}", summary="The HD result: 202 while processing, then PNG",
            responses={200: {"content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}},
                             "description": "PNG (or the `format` asked for)."},
                       202: {"model": HdProcessing}})
async def hd_result(svc: Svc, uuid: str, request: Request):
    job = await svc.desk.find(request, uuid, "hd")
    if job is None:
        return detail(404, "Task not found")
    if job.state == FAILED:  # the client's input: 422 with the reason; ours: spec 000's 500
        if job.error_kind == "input":
            return detail(422, f"Image processing failed: {job.error}")
        return detail(500, "Image processing failed")
    if job.state != COMPLETED:
        return JSONResponse(HdProcessing(uuid=uuid).model_dump(), status_code=202)
    return await svc.desk.output_response(job, missing=lambda: detail(
        404, "Processed image file not found"), download_name=None,
        extra_headers={"X-Model": job.model_used})
