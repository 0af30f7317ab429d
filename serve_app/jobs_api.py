"""Async jobs over HTTP: HD images (spec 000), the /v1/jobs workflow (spec 001), uploads and
downloads (spec 002).

Routes only write and read the durable job store (`serve_app.core.jobs`) and the artifact store; the
work is done by the `JobWorker` deployment, which the ingress pokes after queueing a job. A
mixin of `serve_app.ingress.Ingress`.
"""

import asyncio
import logging
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import File, Form, Header, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.background import BackgroundTask

from pipelines.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    RateLimited,
    ServiceUnavailable,
    StateConflict,
)
from pipelines.fetch import check_url
from pipelines.render import JOB_INPUT_FORMATS as HD_FORMATS
from pipelines.sam import prompt_model_missing
from pipelines.textseg import split_terms
from serve_app.app import app, read_json
from serve_app.core.jobs import COMPLETED, FAILED, Job, TooManyJobs, TransitionError
from serve_app.errors import dependency_failure
from serve_app.errors import render as render_error
from serve_app.platform import caller, caller_id
from serve_app.schemas import (
    CreateJobRequest,
    HdProcessing,
    HdSubmitted,
    JobPrompt,
    JobView,
    StartJobRequest,
    UploadView,
)
from serve_app.uploads import receive_upload

log = logging.getLogger("ray.serve.bgremove")
_JSON_LIMIT = 256 * 1024
_RANGE = re.compile(r"bytes\s*=\s*(\d*)\s*-\s*(\d*)", re.IGNORECASE)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_id(value: str) -> bool:
    """Job and upload ids are UUIDs; anything else (NUL, odd characters) is simply unknown."""
    return _UUID.fullmatch(value) is not None


def too_many_jobs(exc: TooManyJobs) -> RateLimited:
    return RateLimited(f"Too many jobs in progress: {exc.limit} allowed at once for this API "
                       "key; retry when one has finished.",
                       {"limit": exc.limit, "active": exc.active, "retry_after_s": 5})


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


def detail(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


class JobsApi:
    # ---- HD image (spec 000) ----------------------------------------------------------------
    @app.post("/image/hd/submit/v1", status_code=202, response_model=HdSubmitted,
              summary="Submit an image of any size for asynchronous background removal")
    async def hd_submit(self, request: Request, image: Annotated[UploadFile, File()],
                        model: Annotated[str | None, Form()] = None):
        limit = self.settings.hd_max_upload_bytes  # the body as a whole: BodyLimitMiddleware
        if image.size is not None and image.size > limit:
            return detail(413, f"Image file is larger than {limit} bytes.")
        if self.worker is None:
            return detail(503, "Asynchronous processing is not enabled in this deployment.")
        model_id = model or self.default_model
        if model_id not in self.handles:
            return detail(400, f"Model '{model_id}' is not available.")
        await self.require_credits(request, self.settings.price_image)  # charged on completion
        job_id = str(uuid.uuid4())
        key = f"inputs/{job_id}/input"
        owner, max_active = self._job_limit(request)
        try:
            problem = await asyncio.to_thread(self._store_hd_input, image.file, key)
            if problem is not None:
                return detail(400, problem)
            await asyncio.to_thread(
                self.jobs.create, api="hd", kind="image", job_id=job_id, input_key=key,
                start=True, params={"model": "original", "model_id": model_id,
                                    "output_format": "png"},
                owner=owner, max_active=max_active)
        except TooManyJobs as exc:
            await asyncio.to_thread(self.artifacts.delete, key)
            raise too_many_jobs(exc) from None
        except Exception as exc:  # noqa: BLE001 - the documented 500 body
            await asyncio.to_thread(self.artifacts.delete, key)
            mapped = dependency_failure(exc, "Failed to submit image: ")
            if mapped is not None:  # database down (503) or storage full (507)
                raise mapped from None
            log.exception("HD submit failed")
            return detail(500, f"Failed to submit image: {type(exc).__name__}")
        self._wake_worker()
        return HdSubmitted(uuid=job_id)

    def _store_hd_input(self, src, key: str) -> str | None:
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
        if width * height > self.settings.hd_max_pixels:
            return (f"Image too large: {width}x{height} is over the HD limit of "
                    f"{self.settings.hd_max_pixels:,} pixels")
        self._store_upload(src, key)
        return None

    def _store_upload(self, src, key: str) -> None:
        """Copy a spooled upload into the artifact store (atomically)."""
        src.seek(0)
        with self.artifacts.writer(key) as out:
            shutil.copyfileobj(src, out, 1024 * 1024)

    @app.get("/image/hd/result/{uuid}", summary="The HD result: 202 while processing, then PNG",
             responses={200: {"content": {"image/png": {}}}, 202: {"model": HdProcessing}})
    async def hd_result(self, uuid: str, request: Request):
        job = await self._find_job(request, uuid, "hd")
        if job is None:
            return detail(404, "Task not found")
        if job.state == FAILED:
            return detail(500, "Image processing failed")
        if job.state != COMPLETED:
            return JSONResponse(HdProcessing(uuid=uuid).model_dump(), status_code=202)
        return self._output_response(job, missing=lambda: detail(
            404, "Processed image file not found"), download_name=None)

    # ---- /v1/jobs (spec 001) ----------------------------------------------------------------
    @app.post("/v1/jobs", status_code=201, response_model=JobView,
              summary="Create a job (optionally started at once)")
    async def create_job(self, request: Request,
                         idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
        req = await self._job_json(request, CreateJobRequest)
        owner, max_active = self._job_limit(request)
        view, created = await self.submit_job(req, idempotency_key=idempotency_key,
                                              owner=owner, max_active=max_active,
                                              request=request)
        # 201 for a new job; 200 when an Idempotency-Key retry returns the existing one
        return view if created else JSONResponse(view.model_dump(mode="json"), status_code=200)

    async def submit_job(self, req: CreateJobRequest, idempotency_key: str | None = None,
                         owner: str | None = None, max_active: int | None = None,
                         request: Request | None = None) -> tuple[JobView, bool]:
        """Create a job (also the Python handle API): its view, and False when the idempotency
        key had already created it. `owner` (an API key id) alone can see it afterwards."""
        self._require_worker()
        if idempotency_key is not None:  # a retry gets its job back, whatever the limits now
            existing = await asyncio.to_thread(self.jobs.find_idempotent, owner, idempotency_key)
            if existing is not None:
                return self._view(existing), False
        self._check_canvas(req.composition)
        sources = [n for n in ("video_url", "image_url", "upload_id") if getattr(req, n)]
        if len(sources) != 1:
            raise InvalidRequest("Give exactly one of video_url, image_url or upload_id.")
        input_key = input_url = None
        kind = "image"
        if req.upload_id:
            upload = (await asyncio.to_thread(self.jobs.get_upload, req.upload_id)
                      if is_id(req.upload_id) else None)
            if (upload is None or upload["owner"] != owner
                    or not await asyncio.to_thread(self.artifacts.exists, upload["key"])):
                raise NotFound(f"Upload '{req.upload_id}' not found (or expired).")
            input_key, kind = upload["key"], upload["kind"]
            if kind == "image" and upload["size"] > self.settings.hd_max_upload_bytes:
                raise InvalidRequest(f"Image uploads for jobs are limited to "
                                     f"{self.settings.hd_max_upload_bytes} bytes.")
        elif req.video_url:
            kind, input_url = "video", req.video_url
        else:
            input_url = req.image_url
        if input_url is not None and not input_url.lower().startswith(("http://", "https://")):
            raise InvalidRequest("The input URL must be an http(s) URL.")
        fmt = req.output_format or ("webm" if kind == "video" else "png")
        allowed = ("webm", "mp4", "mov") if kind == "video" else ("png", "webp")
        if fmt not in allowed:
            raise InvalidRequest(f"output_format {fmt!r} is not available for {kind} jobs; "
                                 f"use one of {', '.join(allowed)}.")
        if fmt == "mp4" and req.background.type == "transparent":
            raise InvalidRequest("mp4 cannot carry transparency: give a colour background, or "
                                 "use webm or mov.")
        if req.webhook_url is not None:  # the delivery rules, checked now rather than never
            await check_url(req.webhook_url, self.settings.fetch_policy(0), "webhook_url")
        if req.auto_start:
            await self._require_job_credits(request, kind)
        params = {"model": req.model, "model_id": self._tier_model(req.model),
                  "output_format": fmt, "max_duration_s": None,
                  "background": req.background.model_dump(mode="json"),
                  "composition": (req.composition.model_dump(mode="json")
                                  if req.composition else None)}
        if req.prompt is not None:
            params["prompt"] = self._job_prompt(req.prompt, kind)
        try:
            job, created = await asyncio.to_thread(
                self.jobs.create, api="v1", kind=kind, params=params, input_key=input_key,
                input_url=input_url, start=req.auto_start, idempotency_key=idempotency_key,
                webhook_url=req.webhook_url, webhook_secret=req.webhook_secret,
                owner=owner, max_active=max_active)
        except TooManyJobs as exc:
            raise too_many_jobs(exc) from None
        if created and req.auto_start:
            self._wake_worker()
        return self._view(job), created

    @app.post("/v1/jobs/{job_id}/start", response_model=JobView,
              summary="Start a created job with its model, background and composition")
    async def start_job(self, job_id: str, request: Request):
        job = await self._find_job(request, job_id, "v1")
        if job is None:
            raise NotFound("Job not found")
        self._require_worker()
        await self._require_job_credits(request, job.kind)
        req = await self._job_json(request, StartJobRequest)
        self._check_canvas(req.composition)
        update: dict[str, Any] = {}
        if req.model is not None:
            update |= {"model": req.model, "model_id": self._tier_model(req.model)}
        if req.background is not None:
            update["background"] = req.background.model_dump(mode="json")
        if req.composition is not None:
            update["composition"] = req.composition.model_dump(mode="json")
        if req.text_prompt is not None:
            update["text_prompt"] = self._text_terms(req.text_prompt, job.kind)
        if req.prompt is not None:
            update["prompt"] = self._job_prompt(req.prompt, job.kind)
        try:
            job = await asyncio.to_thread(self.jobs.start, job_id, update,
                                          self._job_limit(request)[1])
        except KeyError:
            raise NotFound("Job not found") from None
        except TooManyJobs as exc:
            raise too_many_jobs(exc) from None
        except TransitionError as exc:
            raise StateConflict(f"Job is {exc.state}; only a created job can be started "
                                "(create a new job to retry a failed one).") from None
        self._wake_worker()
        return self._view(job)

    @app.get("/v1/jobs/{job_id}", response_model=JobView, summary="Poll a job")
    async def get_job(self, job_id: str, request: Request) -> JobView:
        job = await self._find_job(request, job_id, "v1")
        if job is None:
            raise NotFound("Job not found")
        return self._view(job)

    # ---- uploads and downloads (spec 002) ---------------------------------------------------
    @app.post("/api/upload", status_code=201, response_model=UploadView,
              summary="Upload an image or video (streamed to storage, up to 500 MB)")
    async def upload(self, request: Request) -> UploadView:
        info = await receive_upload(request, self.artifacts, self.settings.upload_max_bytes)
        try:
            await asyncio.to_thread(self.jobs.add_upload, info.upload_id, info.key,
                                    info.filename, info.media_type, info.kind, info.size,
                                    caller_id(request))
        except Exception:
            await asyncio.to_thread(self.artifacts.delete, info.key)  # no unrecorded upload
            raise
        return UploadView(upload_id=info.upload_id, filename=info.filename,
                          media_type=info.media_type, kind=info.kind, size_bytes=info.size)

    @app.get("/api/download/{job_id}", summary="Download a completed job's output",
             description="Served as often as asked (byte ranges too) until `output_expires_at`.",
             responses={200: {"content": {"image/png": {}, "image/webp": {}, "video/webm": {},
                                          "video/mp4": {}, "video/quicktime": {}}},
                        206: {"description": "The requested byte range"}})
    async def download(self, job_id: str, request: Request):
        job = await self._find_job(request, job_id, None)
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
            return self._output_response(
                job, missing=missing, download_name=f"{job.job_id}.{job.params['output_format']}",
                one_shot=False, range_header=request.headers.get("range"))
        except RangeNotSatisfiable as exc:
            response = render_error(request, exc)
            response.headers["Content-Range"] = f"bytes */{exc.details['size']}"
            return response

    # ---- helpers ------------------------------------------------------------------------------
    def _output_response(self, job: Job, missing, download_name: str | None,
                         extra_headers: dict[str, str] | None = None, one_shot: bool = True,
                         range_header: str | None = None) -> Response:
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

    def _view(self, job: Job) -> JobView:
        output_url = None
        if job.state == COMPLETED and job.output_key:
            base = (self.settings.public_base_url or "").rstrip("/")
            output_url = f"{base}/api/download/{job.job_id}"
        return JobView(
            job_id=job.job_id, status=job.state, kind=job.kind, model=job.params.get("model", ""),
            model_id=job.params.get("model_id", ""),
            output_format=job.params.get("output_format", "png"), created_at=job.created_at,
            started_at=job.started_at, completed_at=job.completed_at, output_url=output_url,
            output_expires_at=job.output_expires_at if output_url else None,
            error=job.error,
            text_prompt=(job.result or {}).get("text_prompt"),
        )

    def _job_prompt(self, prompt: JobPrompt, kind: str) -> dict:
        if kind != "image":
            raise InvalidRequest("prompt (clicks and box) is for image jobs.",
                                 {"field": "prompt"})
        if self.prompter is None:
            raise prompt_model_missing()
        return prompt.model_dump(mode="json")

    def _text_terms(self, text: str, kind: str) -> list[str]:
        terms = split_terms(text)
        if not terms:
            raise InvalidRequest("text_prompt has no terms: give comma-separated words, e.g. "
                                 "'person, handbag'.", {"field": "text_prompt"})
        if len(terms) > 16:
            raise InvalidRequest("text_prompt: at most 16 terms.", {"field": "text_prompt"})
        if any(len(t) > 100 for t in terms):
            raise InvalidRequest("text_prompt: each term at most 100 characters.",
                                 {"field": "text_prompt"})
        if kind != "image":
            raise InvalidRequest("text_prompt is for image jobs in this version.",
                                 {"field": "text_prompt"})
        reason = self.setup.features.get("text_prompt", "not configured")
        if reason is not None:
            raise InvalidRequest(f"text_prompt cannot be used: the open-vocabulary segmentation "
                                 f"backend is {reason}.", {"field": "text_prompt"})
        return terms

    def _tier_model(self, tier: str) -> str:
        model_id = self.setup.tier_models.get(tier)
        if model_id is None or model_id not in self.handles:
            raise InvalidRequest(
                f"No model is served for tier '{tier}' in this deployment.",
                {"field": "model", "received": tier,
                 "available": sorted(t for t, m in self.setup.tier_models.items()
                                     if m in self.handles)})
        return model_id

    async def _find_job(self, request: Request | None, job_id: str, api: str | None) -> Job | None:
        """The job if it exists, belongs to this API (`api`, None: any) and to the caller's key:
        another key's job is "not found", exactly like one that does not exist."""
        job = await asyncio.to_thread(self.jobs.get, job_id) if is_id(job_id) else None
        if job is None or (api is not None and job.api != api):
            return None
        return job if job.owner == caller_id(request) else None

    async def _require_job_credits(self, request: Request | None, kind: str) -> None:
        """Before a /v1/jobs job starts: an image's price, or one second of video (its length
        is known only once the worker reads it; it is charged per processed second)."""
        s = self.settings
        await self.require_credits(request, s.price_video_second if kind == "video"
                                   else s.price_image)

    def _job_limit(self, request: Request | None) -> tuple[str | None, int | None]:
        """The caller's key id and how many of its jobs may be in progress at once."""
        key = caller(request)
        if key is None:
            return None, None
        limit = key.max_concurrent_jobs
        return key.key_id, self.settings.max_concurrent_jobs if limit is None else limit

    def _require_worker(self) -> None:
        if self.worker is None:
            raise ServiceUnavailable("Asynchronous processing is not enabled in this deployment.")

    def _check_canvas(self, composition) -> None:
        canvas = composition.canvas if composition is not None else None
        if canvas is not None and canvas.width * canvas.height > self.settings.hd_max_pixels:
            raise InvalidRequest(f"composition.canvas is larger than "
                                 f"{self.settings.hd_max_pixels:,} pixels.",
                                 {"field": "composition.canvas"})

    def _wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake.remote()  # fire and forget: the worker also polls

    async def _job_json(self, request: Request, model):
        return await read_json(request, model, _JSON_LIMIT, PayloadTooLarge(
            f"Request body is larger than {_JSON_LIMIT} bytes."), empty=b"{}")
