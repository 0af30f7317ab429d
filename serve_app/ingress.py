"""HTTP ingress: FastAPI routes over the model deployments' handles.

Each request is decoded and checked here (size limits, parameters, model id), the alpha mask is
computed by the model's own deployment (`DeploymentHandle.predict`), and the effect is composited
here at full resolution. `Ingress.process` is the same operation as a typed Python method, for
callers that use `serve.get_app_handle(...)` instead of HTTP.
"""


import asyncio
import logging
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipelines import effects
from pipelines.errors import ModelUnavailable, PayloadTooLarge, UnknownModel
from pipelines.images import DecodedImage, decode_image, encode_png
from serve_app.errors import install_error_handlers, validation_error
from serve_app.schemas import (
    BlurOptions,
    ColorOptions,
    Effect,
    GradientOptions,
    Health,
    ImageJob,
    ImageResult,
    MatteOptions,
    ModelHealth,
    ModelInfo,
    Options,
    ShadowOptions,
)
from serve_app.settings import get_settings

log = logging.getLogger("bgremove")

try:
    VERSION = version("bgremove-serve")
except PackageNotFoundError:  # running from a source tree without install
    VERSION = "0.0.0"

app = FastAPI(
    title="bgremove",
    version=VERSION,
    description="Self-hosted background removal on Ray Serve. Image API v1: cut-outs and "
    "background effects. Every image endpoint takes a multipart upload in the field `image`.",
)
install_error_handlers(app)

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
    if image.alpha is not None:  # keep transparency the input already had
        mask = ((mask.astype(np.uint16) * image.alpha) // 255).astype(np.uint8)
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


def _replica_counts() -> dict[str, tuple[int, str]]:
    """Running replicas and state per deployment of this application, from the controller."""
    try:
        app_name = serve.get_replica_context().app_name
        status = serve.status().applications[app_name]
    except Exception:  # noqa: BLE001 - health must answer even if the controller does not
        return {}
    return {
        name: (d.replica_states.get("RUNNING", 0), str(d.status.value if hasattr(d.status, "value") else d.status))
        for name, d in status.deployments.items()
    }


@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        catalog: list[dict[str, Any]],
        missing: dict[str, str],
        default_model: str,
    ) -> None:
        self.handles = models
        self.catalog = {m["id"]: m for m in catalog}
        self.missing = missing
        self.default_model = default_model
        self.settings = get_settings()

    # ---- the operation, callable through HTTP and through a DeploymentHandle ----------------
    async def process(self, job: ImageJob) -> ImageResult:
        """Remove the background of `job.image` and apply `job.effect`; typed handle API."""
        started = time.perf_counter()
        model_id = job.options.model or self.default_model
        handle = self._handle(model_id)
        self._check_upload_size(len(job.image))
        image = await asyncio.to_thread(decode_image, job.image, self.settings.regular_max_pixels)
        t_decoded = time.perf_counter()
        mask = await handle.predict.remote(image.rgb)
        t_masked = time.perf_counter()
        pixels = await asyncio.to_thread(render, job.effect, image, mask, job.options)
        png = await asyncio.to_thread(encode_png, pixels)
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

    def _handle(self, model_id: str) -> DeploymentHandle:
        if model_id in self.handles:
            return self.handles[model_id]
        if model_id in self.missing:
            raise ModelUnavailable(f"Model '{model_id}' is not available: {self.missing[model_id]}")
        if model_id in self.catalog:
            raise ModelUnavailable(f"Model '{model_id}' is not enabled in this deployment.")
        raise UnknownModel(
            f"Unknown model '{model_id}'. Available: {', '.join(sorted(self.handles)) or 'none'}."
        )

    def _check_upload_size(self, size: int) -> None:
        if size > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"Image file is larger than {self.settings.max_upload_bytes} bytes."
            )

    async def _http(self, request: Request, image: UploadFile, effect: Effect, options: Options):
        # Refuse before reading the file into memory: the multipart body's declared length
        # (minus room for the form fields), then the spooled file's size.
        declared = request.headers.get("content-length")
        if declared and declared.isdigit():
            self._check_upload_size(max(0, int(declared) - 64 * 1024))
        if image.size is not None:
            self._check_upload_size(image.size)
        data = await image.read()
        try:
            job = ImageJob(image=data, effect=effect, options=options)
        except ValidationError as exc:
            raise validation_error(exc) from None
        result = await self.process(job)
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

    # ---- service ------------------------------------------------------------------------------
    @app.get("/models", response_model=list[ModelInfo], summary="The model catalog")
    async def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                id=m["id"], name=m["name"], family=m["family"], tier=m["tier"],
                description=m.get("description", ""), available=m["id"] in self.handles,
                detail=self.missing.get(m["id"]),
            )
            for m in self.catalog.values()
        ]

    @app.get("/health", response_model=Health, summary="Service and per-model health")
    async def health(self) -> Health:
        replicas = await asyncio.to_thread(_replica_counts)
        models: dict[str, ModelHealth] = {}
        for model_id in self.handles:
            running, state = replicas.get(model_id, (0, "UNKNOWN"))
            status = "loaded" if running > 0 else ("unhealthy" if state == "UNHEALTHY" else "starting")
            models[model_id] = ModelHealth(
                status=status, tier=self.catalog[model_id]["tier"], replicas=running,
                detail=None if status == "loaded" else f"deployment state {state}",
            )
        for model_id, reason in self.missing.items():
            models[model_id] = ModelHealth(
                status="missing", tier=self.catalog[model_id]["tier"], detail=reason
            )
        healthy = all(m.status == "loaded" for m in models.values())
        return Health(
            status="healthy" if healthy else "degraded", version=VERSION,
            default_model=self.default_model, models=models,
        )

