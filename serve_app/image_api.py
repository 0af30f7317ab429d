"""Image API v1 (spec 000): one model, one effect, multipart upload in, PNG out.

`process` is the operation as a typed method for Python callers of the app handle; the five
routes are its HTTP face. A mixin of `serve_app.ingress.Ingress`, which provides the handles.
"""

import asyncio
import time
from typing import Annotated

import numpy as np
from fastapi import File, Form, Request, UploadFile
from fastapi.responses import Response
from pydantic import ValidationError
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError

from pipelines import effects
from pipelines.errors import PayloadTooLarge, ServiceUnavailable
from pipelines.images import DecodedImage, decode_image, encode_png
from pipelines.sam import prompt_model_missing
from serve_app.app import app
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



class ImageApiV1:
    # ---- the operation, callable through HTTP and through a DeploymentHandle ----------------
    async def process(self, job: ImageJob) -> ImageResult:
        """Remove the background of `job.image` and apply `job.effect`; typed handle API."""
        started = time.perf_counter()
        model_id = job.options.model or self.default_model
        self._handle(model_id)  # an unknown or missing model fails before any decoding
        self._check_upload_size(len(job.image))
        image = await asyncio.to_thread(decode_image, job.image, self.settings.regular_max_pixels)
        t_decoded = time.perf_counter()
        mask = await self.mask_for(image, job.options)
        t_masked = time.perf_counter()
        png = await self.cpu.run(lambda: encode_png(render(job.effect, image, mask, job.options)))
        done = time.perf_counter()
        return ImageResult(
            png=png, width=image.size[0], height=image.size[1], model=model_id, effect=job.effect,
            timings_ms={
                "decode": round((t_decoded - started) * 1e3, 2),
                "mask": round((t_masked - t_decoded) * 1e3, 2),
                "composite_encode": round((done - t_masked) * 1e3, 2),
                "total": round((done - started) * 1e3, 2),
            },
        )

    async def mask_for(self, image: DecodedImage, options: MatteOptions) -> np.ndarray:
        """The options' model's mask of `image`, corrected by their clicks and box if any."""
        model_id = options.model or self.default_model
        handle = self._handle(model_id)
        try:
            mask = await handle.predict.remote(image.rgb)
        except BackPressureError:  # the pool's max_queued_requests: shed, do not pile up
            raise ServiceUnavailable(f"Model '{model_id}' is busy; retry shortly.",
                                     {"retry_after_s": 1}) from None
        except (RayActorError, ActorUnavailableError):  # its replica's node went away
            raise ServiceUnavailable(f"Model '{model_id}' replica was lost; retry shortly.",
                                     {"retry_after_s": 2}) from None
        prompt = options.prompt()
        if prompt:
            mask = await self.prompted_mask(image.rgb, prompt, mask, options.prompt_mode)
        return mask

    async def prompted_mask(self, rgb: np.ndarray, prompt, base: np.ndarray | None,
                            mode: str) -> np.ndarray:
        """The mask corrected (or replaced) by clicks and a box, from the prompt model."""
        if self.prompter is None:
            raise prompt_model_missing()
        prompt.check(rgb.shape[1], rgb.shape[0])
        try:
            return await self.prompter.segment.remote(rgb, prompt, base, mode)
        except BackPressureError:
            raise ServiceUnavailable("The prompt model is busy; retry shortly.",
                                     {"retry_after_s": 1}) from None

    def _check_upload_size(self, size: int) -> None:
        if size > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"Image file is larger than {self.settings.max_upload_bytes} bytes."
            )

    async def _http(self, request: Request, image: UploadFile, effect: Effect, options: Options):
        # The body as a whole was capped while it was read (BodyLimitMiddleware); here the
        # file's own size, before it is read into memory.
        if image.size is not None:
            self._check_upload_size(image.size)
        data = await image.read()
        try:
            job = ImageJob(image=data, effect=effect, options=options)
        except ValidationError as exc:
            raise validation_error(exc) from None
        price = self.settings.price_image
        await self.require_credits(request, price)
        result = await self.process(job)
        await self.charge(request, Charge(f"image.{effect.value}", 1, price))
        return Response(
            content=result.png,
            media_type="image/png",
            headers={
                "Cache-Control": "no-cache",
                "X-Model": result.model,
                "X-Processing-Time-Ms": str(result.timings_ms["total"]),
            },
        )

    # ---- Image API v1 (spec 000) ----------------------------------------------------------
    @app.post("/image/matte/v1", response_class=Response, responses={**PNG, **ERRORS},
              summary="Remove the background (transparent PNG)")
    async def matte(self, request: Request, image: Annotated[UploadFile, File()],
                    options: Annotated[MatteOptions, Form()]):
        return await self._http(request, image, Effect.matte, options)

    @app.post("/image/blur/v1", response_class=Response, responses={**PNG, **ERRORS},
              summary="Blur the background, keep the subject sharp")
    async def blur(self, request: Request, image: Annotated[UploadFile, File()],
                   options: Annotated[BlurOptions, Form()]):
        return await self._http(request, image, Effect.blur, options)

    @app.post("/image/color/v1", response_class=Response, responses={**PNG, **ERRORS},
              summary="Replace the background with a colour")
    async def color(self, request: Request, image: Annotated[UploadFile, File()],
                    options: Annotated[ColorOptions, Form()]):
        return await self._http(request, image, Effect.color, options)

    @app.post("/image/gradient/v1", response_class=Response, responses={**PNG, **ERRORS},
              summary="Replace the background with a linear gradient")
    async def gradient(self, request: Request, image: Annotated[UploadFile, File()],
                       options: Annotated[GradientOptions, Form()]):
        return await self._http(request, image, Effect.gradient, options)

    @app.post("/image/shadow/v1", response_class=Response, responses={**PNG, **ERRORS},
              summary="Cut out the subject and cast a drop shadow from its alpha")
    async def shadow(self, request: Request, image: Annotated[UploadFile, File()],
                     options: Annotated[ShadowOptions, Form()]):
        return await self._http(request, image, Effect.shadow, options)
