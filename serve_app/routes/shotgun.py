"""Shotgun API (spec 003): one image, several models in parallel, every result back to compare.

`remove_background` resizes the decoded image to each selected model's input size and calls
every model deployment's `segment` through its handle at the same time (each call carries only
that small copy); each model's row is finished
(cut-out, optional upscale, encoding) as soon as its own mask arrives. A model that fails or
exceeds `shotgun.model_timeout_s` gets an error row and does not hold up the others. Costs come
from each model's catalog `price` and the inference seconds its replica reports.

The operations are typed functions (the app handle's methods call them); the routes are their
HTTP face. `/results/...` serves the expiring result links of the rows.
"""

import asyncio
import base64
import binascii
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from pipelines.errors import (
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    MissingImage,
    ModelUnavailable,
    PayloadTooLarge,
    ServiceError,
    UnsupportedFormat,
)
from pipelines.fetch import fetch_url
from pipelines.images import (
    SHOTGUN_INPUT_FORMATS,
    DecodedImage,
    decode_image,
    encode_image,
    flatten,
    upscale,
)
from pipelines.render import cutout
from serve_app.app import json_body, read_json
from serve_app.core.errors import ProcessingError
from serve_app.core.keys import Charge
from serve_app.core.store import ModelRun
from serve_app.platform import caller_id
from serve_app.schemas import (
    Dimensions,
    ModelFailure,
    ModelResult,
    ProcessRequest,
    ProcessResponse,
    ProcessResult,
    RemoveBackgroundRequest,
    RemoveBackgroundResponse,
    SafeText,
    SelectionRequest,
    SelectionResponse,
    SelectionStats,
    UpscaleRequest,
    UpscaleResponse,
    WinRateRow,
)
from serve_app.services import Services, Svc

log = logging.getLogger("ray.serve.bgremove")
router = APIRouter()
Body = TypeVar("Body", bound=BaseModel)

_ERRORS = {
    400: {"description": "validation_error, missing_image or invalid_format. "
                         'Body: {"error": {"type", "message", "details"}}'},
    413: {"description": "image_too_large: over 50 MB, or too many pixels."},
    422: {"description": "processing_error: every model failed (rows in details.results)."},
    503: {"description": "service_unavailable: no model is being served."},
}


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass
class _Outcome:
    model_id: str
    elapsed_s: float
    compute_s: float = 0.0
    value: Any = None  # what `finish` returned
    error: str | None = None
    stage: str = "bg_removal"  # where an error happened: "bg_removal" or "finish"


# ---- typed operations (also the Python handle API) --------------------------------------
async def remove_background(svc: Services, req: RemoveBackgroundRequest, base_url: str | None = None,
                            owner: str | None = None) -> RemoveBackgroundResponse:
    """Run the selected models in parallel; every model's cut-out, time and cost."""
    started = time.perf_counter()
    model_ids = _select_models(svc, req.include_models, "include_models")
    with svc.models.admitted(model_ids):  # too much work queued: 503 + Retry-After, at once
        return await _removed(svc, req, model_ids, started, base_url, owner)


async def _removed(svc: Services, req: RemoveBackgroundRequest, model_ids: list[str],
                   started: float, base_url: str | None, owner: str | None
                   ) -> RemoveBackgroundResponse:
    image = await _load_image(svc, req)
    # every row's cut-out is held for the one response, as /process's are
    _check_upscale(svc, image, 1, len(model_ids), field="include_models")
    job_id = str(uuid.uuid4())
    fmt = req.output_format

    def finish(model_id: str, mask: np.ndarray) -> tuple[str, str | None]:
        data = encode_image(cutout(image, mask), fmt)
        link = None
        if svc.links.enabled:
            path = svc.links.save(job_id, f"{model_id}.{fmt}", data)
            link = f"{(svc.settings.public_base_url or base_url or '').rstrip('/')}/results/{path}"
        return base64.b64encode(data).decode("ascii"), link

    outcomes = await _fan_out(svc, image, model_ids, finish)
    rows: list[ModelResult | ModelFailure] = []
    for o in outcomes:
        name = svc.models.catalog[o.model_id]["name"]
        if o.error is not None:
            rows.append(ModelFailure(model_id=o.model_id, model_name=name, error=o.error,
                                     processing_time_ms=_ms(o.elapsed_s)))
        else:
            rows.append(ModelResult(
                model_id=o.model_id, model_name=name, image_base64=o.value[0],
                image_url=o.value[1], processing_time_ms=_ms(o.elapsed_s),
                cost_usd=_cost(svc, o),
            ))
    await _record(svc, job_id, "remove-background", outcomes, owner)
    _raise_if_all_failed(job_id, rows)
    return RemoveBackgroundResponse(
        job_id=job_id, status=_overall(rows), processing_time_ms=_ms(time.perf_counter() - started),
        results=rows, total_cost_usd=round(sum(r.cost_usd for r in rows), 8),
    )

async def upscale_image(svc: Services, req: UpscaleRequest) -> UpscaleResponse:
    """Lanczos ×2/×4; transparency kept when `preserve_alpha` (else flattened on white)."""
    started = time.perf_counter()
    image = await _load_image(svc, req)
    factor = req.scale_factor
    _check_upscale(svc, image, factor)
    keep_alpha = image.alpha is not None and req.preserve_alpha

    def work() -> tuple[bytes, tuple[int, ...]]:
        pixels = image.rgb if image.alpha is None else np.dstack([image.rgb, image.alpha])
        if image.alpha is not None and not keep_alpha:
            pixels = flatten(pixels)
        out = upscale(pixels, factor)
        return encode_image(out, req.output_format), out.shape

    data, shape = await svc.cpu.run(work)
    width, height = image.size
    return UpscaleResponse(
        job_id=str(uuid.uuid4()), scale_factor=factor, alpha_preserved=keep_alpha,
        input_dimensions=Dimensions(width=width, height=height),
        output_dimensions=Dimensions(width=shape[1], height=shape[0]),
        processing_time_ms=_ms(time.perf_counter() - started),
        image_base64=base64.b64encode(data).decode("ascii"),
    )

async def remove_and_upscale(svc: Services, req: ProcessRequest,
                             owner: str | None = None) -> ProcessResponse:
    """`/process`: the shotgun, then every cut-out upscaled (Lanczos, alpha kept)."""
    started = time.perf_counter()
    model_ids = _select_models(svc, req.bg_models, "bg_models")
    with svc.models.admitted(model_ids):
        return await _processed(svc, req, model_ids, started, owner)


async def _processed(svc: Services, req: ProcessRequest, model_ids: list[str], started: float,
                     owner: str | None) -> ProcessResponse:
    image = await _load_image(svc, req)
    factor = req.upscale_factor
    _check_upscale(svc, image, factor, len(model_ids))
    job_id = str(uuid.uuid4())

    def finish(model_id: str, mask: np.ndarray) -> tuple[str, tuple[int, ...]]:
        out = upscale(cutout(image, mask), factor)
        return base64.b64encode(encode_image(out, req.output_format)).decode("ascii"), out.shape

    outcomes = await _fan_out(svc, image, model_ids, finish)
    width, height = image.size
    rows = []
    for o in outcomes:
        removed = o.error is None or o.stage == "finish"
        rows.append(ProcessResult(
            model_id=o.model_id, model_name=svc.models.catalog[o.model_id]["name"],
            bg_removal_status="success" if removed else "error",
            upscale_status="success" if o.error is None else ("error" if removed else "skipped"),
            input_dimensions=Dimensions(width=width, height=height),
            output_dimensions=(Dimensions(width=o.value[1][1], height=o.value[1][0])
                               if o.error is None else None),
            image_base64=o.value[0] if o.error is None else None, error=o.error,
            processing_time_ms=_ms(o.elapsed_s),
            cost_usd=_cost(svc, o) if o.error is None else 0.0,
        ))
    await _record(svc, job_id, "process", outcomes, owner)
    if all(r.upscale_status != "success" for r in rows):
        raise ProcessingError("All models failed.", {"job_id": job_id, "results": [
            r.model_dump(exclude_none=True) for r in rows]})
    return ProcessResponse(
        job_id=job_id, status="partial" if any(r.error for r in rows) else "completed",
        processing_time_ms=_ms(time.perf_counter() - started), results=rows,
        total_cost_usd=round(sum(r.cost_usd for r in rows), 8),
    )

async def log_selection(svc: Services, req: SelectionRequest,
                        owner: str | None = None) -> SelectionResponse:
    """Record which model's result a person picked for a shotgun job."""
    selection_id = await asyncio.to_thread(
        svc.store.log_selection, req.job_id, req.selected_model_id, req.image_category,
        req.notes, owner,
    )
    return SelectionResponse(selection_id=selection_id)

async def selection_stats(svc: Services, category: str | None = None) -> SelectionStats:
    """Win rate per model and image category: how often each model's result was picked."""
    rates = await asyncio.to_thread(svc.store.win_rates, category)
    return SelectionStats(rows=[WinRateRow(category=r.category, model_id=r.model_id,
                                           wins=r.wins, offered=r.offered,
                                           win_rate=round(r.win_rate, 4)) for r in rates])

# ---- HTTP (spec 003) ----------------------------------------------------------------------
@router.post("/remove-background", response_model=RemoveBackgroundResponse, responses=_ERRORS,
          openapi_extra=json_body(RemoveBackgroundRequest),
          summary="Shotgun: run several background-removal models in parallel")
async def http_remove_background(svc: Svc, request: Request) -> RemoveBackgroundResponse:
    req = await _read_json(svc, request, RemoveBackgroundRequest)
    price = svc.settings.price_shotgun_model
    await svc.credits.require(
        request, price * len(_select_models(svc, req.include_models, "include_models")))
    result = await remove_background(svc, req, base_url=str(request.base_url),
                                          owner=caller_id(request))
    done = sum(r.status == "success" for r in result.results)
    await svc.credits.charge(request, Charge("shotgun", done, price * done))
    return result

@router.post("/upscale", response_model=UpscaleResponse, responses=_ERRORS,
          openapi_extra=json_body(UpscaleRequest),
          summary="Upscale ×2 or ×4 with Lanczos, keeping transparency")
async def http_upscale(svc: Svc, request: Request) -> UpscaleResponse:
    req = await _read_json(svc, request, UpscaleRequest)
    price = svc.settings.price_image
    await svc.credits.require(request, price)
    result = await upscale_image(svc, req)
    await svc.credits.charge(request, Charge("upscale", 1, price))
    return result

@router.post("/process", response_model=ProcessResponse, responses=_ERRORS,
          openapi_extra=json_body(ProcessRequest),
          summary="Shotgun background removal, then every result upscaled")
async def http_process(svc: Svc, request: Request) -> ProcessResponse:
    req = await _read_json(svc, request, ProcessRequest)
    price = svc.settings.price_shotgun_model
    await svc.credits.require(request, price * len(_select_models(svc, req.bg_models,
                                                                        "bg_models")))
    result = await remove_and_upscale(svc, req, owner=caller_id(request))
    done = sum(r.bg_removal_status == "success" for r in result.results)
    await svc.credits.charge(request, Charge("process", done, price * done))
    return result

@router.post("/log-selection", response_model=SelectionResponse, responses=_ERRORS,
          openapi_extra=json_body(SelectionRequest),
          summary="Record which model's result the user picked")
async def http_log_selection(svc: Svc, request: Request) -> SelectionResponse:
    return await log_selection(svc, await _read_json(svc, request, SelectionRequest),
                                    owner=caller_id(request))

@router.get("/selections/stats", response_model=SelectionStats,
         summary="Win rates per model and image category (from /log-selection)")
async def http_selection_stats(
    svc: Svc, category: Annotated[str | None, Query(max_length=64, pattern=SafeText)] = None,
) -> SelectionStats:
    return await selection_stats(svc, category)

@router.get("/results/{job_id}/{name}", response_class=StreamingResponse,
            summary="A shotgun result, downloadable for a limited time (`image_url` in rows)")
async def result_file(svc: Svc, job_id: str, name: str):
    found = await asyncio.to_thread(svc.links.find, job_id, name) if svc.links.enabled else None
    if found is None:
        raise HTTPException(404, "No such result, or its link has expired.")
    f, remaining = found
    size = f.seek(0, 2)
    f.seek(0)

    def chunks():
        with f:
            while chunk := f.read(1024 * 1024):
                yield chunk

    media_type = "image/webp" if name.endswith(".webp") else "image/png"
    return StreamingResponse(chunks(), media_type=media_type, headers={
        "Cache-Control": f"private, max-age={int(remaining)}", "Content-Length": str(size)})


# ---- helpers ------------------------------------------------------------------------------
async def _fan_out(svc: Services, image: DecodedImage, model_ids: list[str],
                   finish: Callable[[str, np.ndarray], Any]) -> list[_Outcome]:
    # Each model gets the image at its own input size (resized here, in parallel threads) and
    # answers at its output size: a 12 MP photo is a few hundred KB per model over Ray.
    timeout = svc.setup.shotgun.model_timeout_s

    async def one(model_id: str) -> _Outcome:
        started = time.perf_counter()
        outcome = _Outcome(model_id, 0.0)
        try:
            async with asyncio.timeout(timeout):  # a timeout cancels the replica's request
                mask, outcome.compute_s = await svc.models.segment(model_id, image.rgb)
            outcome.stage = "finish"
            outcome.value = await svc.cpu.run(finish, model_id, mask)
        except TimeoutError:
            outcome.error = f"Model timed out after {timeout:g}s"
        except ServiceError as exc:
            outcome.error = exc.message
        except Exception:  # noqa: BLE001 - one model's failure is reported in its row
            log.exception("shotgun: model %s failed (%s)", model_id, outcome.stage)
            outcome.error = "Model failed with an internal error"
        outcome.elapsed_s = time.perf_counter() - started
        return outcome

    return await asyncio.gather(*(one(m) for m in model_ids))

def _select_models(svc: Services, requested: list[str], field: str) -> list[str]:
    if requested == ["all"]:
        # configured models that are served or missing (an error row); optional models
        # whose files are absent are left out quietly
        chosen = [m for m in svc.setup.shotgun.models or svc.models.handles
                  if m in svc.models.handles or m in svc.models.missing]
        if not any(m in svc.models.handles for m in chosen):
            raise ModelUnavailable("No models are being served.", {"missing": svc.models.missing})
        return chosen
    if "all" in requested:
        raise InvalidRequest('"all" cannot be combined with model ids.',
                             {"field": field, "received": requested})
    unknown = [m for m in requested if m not in svc.models.catalog]
    if unknown:
        raise InvalidRequest(
            f"Unknown model id(s): {', '.join(unknown)}.",
            {"field": field, "received": unknown, "allowed": sorted(svc.models.handles)},
        )
    return list(dict.fromkeys(requested))  # unique, in the order asked

async def _read_json(svc: Services, request: Request, model: type[Body]) -> Body:
    limit = svc.settings.shotgun_max_bytes * 4 // 3 + 64 * 1024  # base64 plus fields
    return await read_json(request, model, limit, PayloadTooLarge(
        f"Request body is larger than {limit} bytes (images up to "
        f"{svc.settings.shotgun_max_bytes // (1024 * 1024)} MB).", {"limit_bytes": limit}))

async def _load_image(svc: Services, req: RemoveBackgroundRequest | UpscaleRequest | ProcessRequest
                      ) -> DecodedImage:
    max_bytes = svc.settings.shotgun_max_bytes
    if req.image == "" or req.image == b"":
        req = req.model_copy(update={"image": None})
    if req.image_url == "":
        req = req.model_copy(update={"image_url": None})
    if req.image is not None and req.image_url is not None:
        raise InvalidRequest("Give either image or image_url, not both.",
                             {"field": "image_url"})
    if req.image is None and req.image_url is None:
        raise MissingImage("Neither image nor image_url was provided.",
                           {"fields": ["image", "image_url"]})
    if req.image_url is not None:
        data = await fetch_url(req.image_url, svc.settings.fetch_policy(svc.settings.shotgun_max_bytes))
    elif isinstance(req.image, bytes):
        data = req.image
    else:
        data = _b64decode(req.image, max_bytes)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"Image exceeds the {max_bytes // (1024 * 1024)} MB limit.",
                              {"field": "image", "limit_bytes": max_bytes,
                               "received_bytes": len(data)})
    return await svc.cpu.run(_decode_supported, data, svc.settings.shotgun_max_pixels)

def _check_upscale(svc: Services, image: DecodedImage, factor: int, results: int = 1,
                   field: str = "bg_models") -> None:
    """Each output within `upscale_max_output_pixels`; all of a /process or
    /remove-background request's outputs (held together for the response) within
    `process_max_output_pixels`."""
    width, height = image.size
    pixels, limit = width * height * factor * factor, svc.settings.upscale_max_output_pixels
    if pixels > limit:
        raise PayloadTooLarge(
            f"Upscaling {width}x{height} by {factor} gives {pixels:,} pixels; "
            f"the limit is {limit:,}.",
            {"field": "image", "output_pixels": pixels, "limit_pixels": limit},
        )
    total, budget = pixels * results, svc.settings.process_max_output_pixels
    if results > 1 and total > budget:
        raise PayloadTooLarge(
            f"{results} results of {pixels:,} pixels each exceed the {budget:,}-pixel budget "
            "of one request; select fewer models or a smaller factor.",
            {"field": field, "output_pixels": total, "limit_pixels": budget},
        )

def _cost(svc: Services, outcome: _Outcome) -> float:
    return round(svc.models.prices[outcome.model_id].cost(outcome.compute_s), 8)

async def _record(svc: Services, job_id: str, kind: str, outcomes: list[_Outcome],
                  owner: str | None) -> None:
    runs = [ModelRun(o.model_id, "success" if o.error is None else "error",
                     _ms(o.elapsed_s), _cost(svc, o) if o.error is None else 0.0)
            for o in outcomes]
    try:
        await asyncio.to_thread(svc.store.record_job, job_id, kind, runs, owner)
    except Exception:  # noqa: BLE001 - the results are computed: return them regardless
        log.exception("shotgun job %s could not be recorded; /log-selection will not know it",
                      job_id)

def _raise_if_all_failed(job_id: str, rows: list[ModelResult | ModelFailure]) -> None:
    if rows and all(r.status == "error" for r in rows):
        raise ProcessingError("All models failed.", {
            "job_id": job_id, "results": [r.model_dump() for r in rows]})


def _overall(rows: list[ModelResult | ModelFailure]) -> str:
    return "partial" if any(r.status == "error" for r in rows) else "completed"


def _b64decode(text: str, max_bytes: int) -> bytes:
    if text.startswith("data:"):  # data:image/png;base64,....
        _, _, text = text.partition(",")
    text = "".join(text.split())  # line breaks from MIME-style encoders
    if len(text) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"Image exceeds the {max_bytes // (1024 * 1024)} MB limit.",
                              {"field": "image", "limit_bytes": max_bytes})
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image is not valid base64.", {"field": "image"}) from None


def _decode_supported(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode a PNG, JPEG or WebP (spec 003's formats) with a pixel limit."""
    try:
        return decode_image(data, max_pixels, formats=SHOTGUN_INPUT_FORMATS)
    except ImageTooLarge:
        raise PayloadTooLarge(f"Image has more than {max_pixels:,} pixels.",
                              {"field": "image", "limit_pixels": max_pixels}) from None
    except UnsupportedFormat as exc:
        raise UnsupportedFormat("Invalid image format. Supported: PNG, JPG, WEBP",
                                exc.details) from None
    except InvalidImage as exc:
        raise InvalidImage(f"Invalid image format: {exc.message.removeprefix('Invalid image file: ')}"
                           ". Supported: PNG, JPG, WEBP", {"field": "image"}) from None
