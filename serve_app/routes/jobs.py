"""The /v1/jobs workflow (spec 001): create a job (from a URL or an upload), start it with a
model, background, composition and prompts, poll it. `submit_job` is also the app handle's.

The job's parameters are one typed record (`JobParams`) written here and read by the worker.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from pipelines.auto import AUTO
from pipelines.compose import Composition
from pipelines.errors import InvalidRequest, PayloadTooLarge
from pipelines.fetch import check_url
from pipelines.output import OutputOptions
from pipelines.sam import prompt_model_missing
from pipelines.textseg import split_terms
from serve_app.app import json_body, read_json
from serve_app.core.errors import NotFound, StateConflict
from serve_app.core.job_params import JobParams, JobPrompt
from serve_app.core.job_store import COMPLETED, Job, TooManyJobs, TransitionError
from serve_app.core.output_links import output_link
from serve_app.job_desk import is_id, too_many_jobs
from serve_app.schemas import CreateJobRequest, JobView, StartJobRequest
from serve_app.services import Services, Svc

router = APIRouter()
Body = TypeVar("Body", bound=BaseModel)
_JSON_LIMIT = 256 * 1024


@router.post("/v1/jobs", status_code=201, response_model=JobView,
             summary="Create a job (optionally started at once)",
             openapi_extra=json_body(CreateJobRequest))
async def create_job(svc: Svc, request: Request,
                     idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    req = await _job_json(request, CreateJobRequest)
    owner, max_active = svc.desk.limit(request)
    view, created = await submit_job(svc, req, idempotency_key=idempotency_key, owner=owner,
                                     max_active=max_active, request=request)
    # 201 for a new job; 200 when an Idempotency-Key retry returns the existing one
    return view if created else JSONResponse(view.model_dump(mode="json"), status_code=200)


async def submit_job(svc: Services, req: CreateJobRequest, idempotency_key: str | None = None,
                     owner: str | None = None, max_active: int | None = None,
                     request: Request | None = None) -> tuple[JobView, bool]:
    """Create a job: its view, and False when the idempotency key had already created it.
    `owner` (an API key id) alone can see it afterwards."""
    svc.desk.require_worker()
    if (existing := await svc.desk.earlier(owner, idempotency_key, "v1")) is not None:
        return view(svc, existing), False
    sources = [n for n in ("video_url", "image_url", "upload_id") if getattr(req, n)]
    if len(sources) != 1:
        raise InvalidRequest("Give exactly one of video_url, image_url or upload_id.")
    input_key = input_url = None
    kind = "image"
    if req.upload_id:
        upload = (await asyncio.to_thread(svc.jobs.uploads.get, req.upload_id)
                  if is_id(req.upload_id) else None)
        if (upload is None or upload["owner"] != owner
                or not await asyncio.to_thread(svc.artifacts.exists, upload["key"])):
            raise NotFound(f"Upload '{req.upload_id}' not found (or expired).")
        input_key, kind = upload["key"], upload["kind"]
        limit = svc.settings.hd_max_upload_bytes
        if kind == "image" and upload["size"] > limit:
            raise InvalidRequest(f"Image uploads for jobs are limited to {limit} bytes.")
    elif req.video_url:
        kind, input_url = "video", req.video_url
    else:
        input_url = req.image_url
    if input_url is not None and not input_url.lower().startswith(("http://", "https://")):
        raise InvalidRequest("The input URL must be an http(s) URL.")
    _check_canvas(svc, req.composition, kind)
    fmt = req.output_format or ("webm" if kind == "video" else "png")
    allowed = ("webm", "mp4", "mov") if kind == "video" else ("png", "webp", "jpg")
    if fmt not in allowed:
        raise InvalidRequest(f"output_format {fmt!r} is not available for {kind} jobs; "
                             f"use one of {', '.join(allowed)}.")
    if fmt == "mp4" and req.background.type == "transparent":
        raise InvalidRequest("mp4 cannot carry transparency: give a colour background, or "
                             "use webm or mov.")
    options = _output_options(req, kind, fmt)
    if req.webhook_url is not None:  # the delivery rules, checked now rather than never
        await check_url(req.webhook_url, svc.settings.fetch_policy(0), "webhook_url")
    if req.auto_start:
        await _require_job_credits(svc, request, kind)
    params = JobParams(model=req.model, model_id=_tier_model(svc, req.model), output_format=fmt,
                       background=req.background, composition=req.composition,
                       prompt=_job_prompt(svc, req.prompt, kind) if req.prompt else None,
                       options=options,
                       max_duration_s=svc.settings.job_video_max_duration_s
                       if kind == "video" else None)
    try:
        job, created = await asyncio.to_thread(
            svc.jobs.create, api="v1", kind=kind, params=params, input_key=input_key,
            input_url=input_url, start=req.auto_start, idempotency_key=idempotency_key,
            webhook_url=req.webhook_url, webhook_secret=req.webhook_secret,
            owner=owner, max_active=max_active)
    except TooManyJobs as exc:
        raise too_many_jobs(exc) from None
    if created and req.auto_start:
        svc.desk.wake()
    return view(svc, job), created


@router.post("/v1/jobs/{job_id}/start", response_model=JobView,
             summary="Start a created job with its model, background and composition",
             openapi_extra=json_body(StartJobRequest, required=False))
async def start_job(svc: Svc, job_id: str, request: Request):
    job = await svc.desk.find(request, job_id, "v1")
    if job is None:
        raise NotFound("Job not found")
    svc.desk.require_worker()
    await _require_job_credits(svc, request, job.kind)
    req = await _job_json(request, StartJobRequest)
    _check_canvas(svc, req.composition, job.kind)
    update: dict[str, Any] = {}
    if req.model is not None:
        update |= {"model": req.model, "model_id": _tier_model(svc, req.model)}
    if req.background is not None:
        update["background"] = req.background
    if req.composition is not None:
        update["composition"] = req.composition
    if req.text_prompt is not None:
        update["text_prompt"] = _text_terms(svc, req.text_prompt, job.kind)
    if req.prompt is not None:
        update["prompt"] = _job_prompt(svc, req.prompt, job.kind)
    params = JobParams.model_validate(job.params.model_dump() | update)
    if (params.output_format == "jpg" and params.background.type == "transparent"
            and (params.options is None or params.options.output != "mask")):
        raise InvalidRequest("background: a jpg job needs a colour background (jpg cannot "
                             "carry transparency).", {"field": "background"})
    try:
        job = await asyncio.to_thread(svc.jobs.start, job_id, params, svc.desk.limit(request)[1])
    except KeyError:
        raise NotFound("Job not found") from None
    except TooManyJobs as exc:
        raise too_many_jobs(exc) from None
    except TransitionError as exc:
        raise StateConflict(f"Job is {exc.state}; only a created job can be started "
                            "(create a new job to retry a failed one).") from None
    svc.desk.wake()
    return view(svc, job)


@router.get("/v1/jobs/{job_id}", response_model=JobView, summary="Poll a job")
async def get_job(svc: Svc, job_id: str, request: Request) -> JobView:
    job = await svc.desk.find(request, job_id, "v1")
    if job is None:
        raise NotFound("Job not found")
    return await asyncio.to_thread(view, svc, job)  # a bucket's link is signed here


def view(svc: Services, job: Job) -> JobView:
    output_url = None
    expired = job.output_expires_at is not None and job.output_expires_at <= datetime.now(UTC)
    if job.state == COMPLETED and job.output_key and not expired:  # "while the output exists"
        output_url = output_link(svc.settings, svc.artifacts, job)
    return JobView(
        job_id=job.job_id, status=job.state, kind=job.kind, model=job.params.model,
        model_id=job.model_used, output_format=job.params.output_format,
        created_at=job.created_at, started_at=job.started_at, completed_at=job.completed_at,
        output_url=output_url, output_expires_at=job.output_expires_at if output_url else None,
        error=job.error, text_prompt=(job.result or {}).get("text_prompt"),
    )


def _output_options(req: CreateJobRequest, kind: str, fmt: str) -> OutputOptions | None:
    """The request's output options as the job keeps them (None: all defaults)."""
    if fmt == "jpg" and req.output != "mask" and req.background.type == "transparent":
        raise InvalidRequest("output_format: jpg cannot carry transparency; give a colour "
                             "background, output=mask, or use png or webp.",
                             {"field": "output_format"})
    changed = req.changed_fields()
    if not changed:
        return None
    if kind != "image":
        raise InvalidRequest(f"{changed[0]} is an output option of image jobs.",
                             {"field": changed[0]})
    return req.output_only()


def _job_prompt(svc: Services, prompt: JobPrompt, kind: str) -> JobPrompt:
    if kind != "image":
        raise InvalidRequest("prompt (clicks and box) is for image jobs.", {"field": "prompt"})
    if svc.models.prompter is None:
        raise prompt_model_missing()
    return prompt


def _text_terms(svc: Services, text: str, kind: str) -> list[str]:
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
    reason = svc.setup.features.get("text_prompt", "not configured")
    if reason is not None:
        raise InvalidRequest(f"text_prompt cannot be used: the open-vocabulary segmentation "
                             f"backend is {reason}.", {"field": "text_prompt"})
    return terms


def _tier_model(svc: Services, tier: str) -> str:
    tiers, served = svc.setup.tier_models, svc.models.handles
    model_id = AUTO if tier == AUTO else tiers.get(tier)
    if model_id == AUTO and svc.models.auto_models:
        return AUTO  # the worker chooses once it has the image (also `original` = default auto)
    if model_id is None or model_id not in served:
        raise InvalidRequest(
            f"No model is served for tier '{tier}' in this deployment.",
            {"field": "model", "received": tier,
             "available": sorted(t for t, m in tiers.items() if m in served)})
    return model_id


async def _require_job_credits(svc: Services, request: Request | None, kind: str) -> None:
    """Before a /v1/jobs job starts: an image's price, or one second of video (its length is
    known only once the worker reads it: the worker then refuses, before processing, a clip
    whose processed seconds the balance cannot pay, and charges the seconds processed)."""
    s = svc.settings
    await svc.credits.require(request, s.price_video_second if kind == "video" else s.price_image)


def _check_canvas(svc: Services, composition: Composition | None, kind: str) -> None:
    """A canvas no larger than an image may be (HD), or a video frame (every frame of a clip
    is held whole in memory while in flight)."""
    canvas = composition.canvas if composition is not None else None
    limit = svc.settings.video_max_pixels if kind == "video" else svc.settings.hd_max_pixels
    if canvas is not None and canvas.width * canvas.height > limit:
        raise InvalidRequest(f"composition.canvas is larger than {limit:,} pixels.",
                             {"field": "composition.canvas"})


async def _job_json(request: Request, model: type[Body]) -> Body:
    return await read_json(request, model, _JSON_LIMIT, PayloadTooLarge(
        f"Request body is larger than {_JSON_LIMIT} bytes."), empty=b"{}")
