"""Image API v1 (spec 000): one model, one effect, multipart upload in, PNG out.

`process` is the operation as a typed function (the app handle's `process` calls it); the five
routes are its HTTP face.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response
from pydantic import ValidationError

from pipelines import effects, output
from pipelines.errors import InvalidParameter, PayloadTooLarge
from pipelines.images import DecodedImage, decode_image
from serve_app.core.keys import Charge
from serve_app.errors import validation_error
from serve_app.schemas import (
    BlurOptions,
    ColorOptions,
    Effect,
    GradientOptions,
    ImageJob,
    ImageResult,
    MatteOptions,
    Options,
    ShadowOptions,
)
from serve_app.services import Services, Svc

router = APIRouter()
PNG = {200: {"content": {"image/png": {}}, "description": "PNG at the input's full resolution."}}
ERRORS = {
    400: {"description": "Not an image, corrupt, empty, too large (use the HD endpoint), "
                         "or unknown model. Body: {\"message\": ...}"},
    413: {"description": "Upload larger than the configured byte limit."},
    422: {"description": "Invalid parameter. Body: {\"message\": \"Invalid request data: ...\"}"},
    503: {"description": "The model is not being served (weights missing)."},
}


def render(effect: Effect, image: DecodedImage, mask: np.ndarray, options: Options) -> np.ndarray:
    """Composite the effect at full resolution (pure CPU work, run in a thread)."""
    rgb = image.rgb
    mask = image.within_alpha(mask)  # keep transparency the input already had
    if effect is Effect.matte:
        return effects.cutout(rgb, mask)
    if effect is Effect.blur:
        return effects.blur_background(rgb, mask, options.blur_strength)
    if effect is Effect.color:
        return effects.color_background(rgb, mask, effects.parse_color(options.bg_color))
    if effect is Effect.gradient:
        return effects.gradient_background(
            rgb, mask, effects.parse_color(options.gradient_start),
            effects.parse_color(options.gradient_end), options.gradient_angle,
        )
    return effects.drop_shadow(
        rgb, mask,
        offset=(options.shadow_offset_x, options.shadow_offset_y),
        blur=options.shadow_blur,
        opacity=options.shadow_opacity,
        shadow_color=effects.parse_color(options.shadow_color),
        background=effects.parse_color(options.bg_color) if options.bg_color else None,
    )


def finish(effect: Effect, image: DecodedImage, mask: np.ndarray, options: Options) -> bytes:
    """The encoded result with the options' output settings (pure CPU work, in a thread)."""
    return output.finish(image.rgb, mask, lambda m: render(effect, image, m, options),
                         options, options.format, alpha=image.within_alpha)


def check_upload_size(svc: Services, size: int) -> None:
    if size > svc.settings.max_upload_bytes:
        raise PayloadTooLarge(f"Image file is larger than {svc.settings.max_upload_bytes} bytes.")


async def read_upload(svc: Services, upload: UploadFile) -> bytes:
    """An uploaded image's bytes within the regular endpoints' limit. The body as a whole was
    capped while it was read (BodyLimitMiddleware); here the file's own size."""
    if upload.size is not None:
        check_upload_size(svc, upload.size)
    data = await upload.read()
    check_upload_size(svc, len(data))
    return data


def check_opaque(effect: Effect, options: Options) -> None:
    """jpg has no alpha: refused up front for a result that would be transparent."""
    if options.format != "jpg" or options.output == "mask":
        return
    transparent = effect is Effect.matte or (effect is Effect.shadow and not options.bg_color)
    if transparent:
        raise InvalidParameter(
            f"format: jpg cannot carry the transparency of the {effect.value} effect; give "
            "a background colour (the color effect, or bg_color with shadow), or use png or "
            "webp.", {"field": "format"})


async def process(svc: Services, job: ImageJob) -> ImageResult:
    """Remove the background of `job.image` and apply `job.effect`."""
    started = time.perf_counter()
    check_opaque(job.effect, job.options)
    svc.models.check(job.options.model)  # unknown or missing: before decoding
    with svc.models.admitted(job.options.model):  # too much work queued: 503 + Retry-After
        return await _processed(svc, job, started)


async def _processed(svc: Services, job: ImageJob, started: float) -> ImageResult:
    check_upload_size(svc, len(job.image))
    image = await asyncio.to_thread(decode_image, job.image, svc.settings.regular_max_pixels)
    t_decoded = time.perf_counter()
    found = await svc.models.mask_for(image, job.options)  # `auto` chooses here
    t_masked = time.perf_counter()
    data = await svc.cpu.run(finish, job.effect, image, found.mask, job.options)
    done = time.perf_counter()
    return ImageResult(
        png=data, media_type=output.MEDIA_TYPES[job.options.format],
        width=image.size[0], height=image.size[1], model=found.model_id, effect=job.effect,
        subject=found.subject, auto_reason=found.why,
        timings_ms={
            "decode": round((t_decoded - started) * 1e3, 2),
            "mask": round((t_masked - t_decoded) * 1e3, 2),
            "composite_encode": round((done - t_masked) * 1e3, 2),
            "total": round((done - started) * 1e3, 2),
        },
    )


async def _http(svc: Services, request: Request, image: UploadFile, effect: Effect,
                options: Options) -> Response:
    if image.size is not None:
        check_upload_size(svc, image.size)
    data = await image.read()
    try:
        job = ImageJob(image=data, effect=effect, options=options)
    except ValidationError as exc:
        raise validation_error(exc) from None
    price = svc.settings.price_image
    await svc.credits.require(request, price)
    result = await process(svc, job)
    await svc.credits.charge(request, Charge(f"image.{effect.value}", 1, price))
    return Response(
        content=result.png,
        media_type=result.media_type,
        headers={
            "Cache-Control": "no-cache",
            "X-Model": result.model,
            "X-Processing-Time-Ms": str(result.timings_ms["total"]),
            **({"X-Type": result.subject} if result.subject else {}),
            **({"X-Auto-Reason": result.auto_reason} if result.auto_reason else {}),
        },
    )


@router.post("/image/matte/v1", response_class=Response, responses={**PNG, **ERRORS},
             summary="Remove the background (transparent PNG)")
async def matte(svc: Svc, request: Request, image: Annotated[UploadFile, File()],
                options: Annotated[MatteOptions, Form()]):
    return await _http(svc, request, image, Effect.matte, options)


@router.post("/image/blur/v1", response_class=Response, responses={**PNG, **ERRORS},
             summary="Blur the background, keep the subject sharp")
async def blur(svc: Svc, request: Request, image: Annotated[UploadFile, File()],
               options: Annotated[BlurOptions, Form()]):
    return await _http(svc, request, image, Effect.blur, options)


@router.post("/image/color/v1", response_class=Response, responses={**PNG, **ERRORS},
             summary="Replace the background with a colour")
async def color(svc: Svc, request: Request, image: Annotated[UploadFile, File()],
                options: Annotated[ColorOptions, Form()]):
    return await _http(svc, request, image, Effect.color, options)


@router.post("/image/gradient/v1", response_class=Response, responses={**PNG, **ERRORS},
             summary="Replace the background with a linear gradient")
async def gradient(svc: Svc, request: Request, image: Annotated[UploadFile, File()],
                   options: Annotated[GradientOptions, Form()]):
    return await _http(svc, request, image, Effect.gradient, options)


@router.post("/image/shadow/v1", response_class=Response, responses={**PNG, **ERRORS},
             summary="Cut out the subject and cast a drop shadow from its alpha")
async def shadow(svc: Svc, request: Request, image: Annotated[UploadFile, File()],
                 options: Annotated[ShadowOptions, Form()]):
    return await _http(svc, request, image, Effect.shadow, options)
