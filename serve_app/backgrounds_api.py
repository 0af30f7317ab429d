"""New backgrounds for a subject: `/image/backdrop/v1` (procedural or uploaded scenes, not
generative) and `/image/generate/v1` (spec 000's AI background generation).

A mixin of `serve_app.ingress.Ingress` (handles, settings, credits and the CPU slots).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
from fastapi import File, Form, Request, UploadFile
from fastapi.responses import Response
from ray.serve.exceptions import BackPressureError

from pipelines import effects, scene
from pipelines.errors import InvalidImage, InvalidParameter, ModelUnavailable, ServiceUnavailable
from pipelines.generate import MAX_SIDE, GenerateOptions, transparent_enough
from pipelines.images import DecodedImage, decode_image, encode_png
from serve_app.app import app
from serve_app.core.keys import Charge
from serve_app.image_api import ERRORS, PNG
from serve_app.schemas import BackdropOptions, GenerateForm

NOT_TRANSPARENT = "The input image must have a transparent background."


class BackgroundsApi:
    async def _read_image(self, upload: UploadFile) -> DecodedImage:
        if upload.size is not None:
            self._check_upload_size(upload.size)
        data = await upload.read()
        self._check_upload_size(len(data))
        return await asyncio.to_thread(decode_image, data, self.settings.regular_max_pixels)

    @app.post("/image/backdrop/v1", response_class=Response, responses={**PNG, **ERRORS},
              summary="Place the subject into a studio scene (procedural or uploaded; not AI)")
    async def backdrop(self, request: Request, image: Annotated[UploadFile, File()],
                       options: Annotated[BackdropOptions, Form()],
                       scene_image: Annotated[UploadFile | None, File()] = None):
        decoded = await self._read_image(image)
        backdrop = await self._read_image(scene_image) if scene_image is not None else None
        await self.require_credits(request, self.settings.price_backdrop)
        # A cut-out keeps its own alpha (clicks and a box still correct it); anything else is
        # cut out by the model first.
        if transparent_enough(decoded.alpha):
            alpha, prompt = decoded.alpha, options.prompt()
            if prompt:
                alpha = await self.prompted_mask(decoded.rgb, prompt, alpha, options.prompt_mode)
        else:
            alpha = await self.mask_for(decoded, options)
        w, h = decoded.size

        def render() -> bytes:
            bg = (scene.fit_scene(backdrop.rgb, w, h) if backdrop is not None else
                  scene.make_scene(options.scene, w, h, effects.parse_color(options.scene_color),
                                   effects.parse_color(options.scene_color_end), options.seed))
            return encode_png(scene.place(decoded.rgb, alpha, bg,
                                          shadow_opacity=options.shadow_opacity,
                                          light_wrap=options.light_wrap,
                                          color_match=options.color_match))

        png = await self.cpu.run(render)
        await self.charge(request, Charge("image.backdrop", 1, self.settings.price_backdrop))
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

    @app.post("/image/generate/v1", response_class=Response,
              responses={**PNG, 400: {"description": 'Opaque input: {"message": "The input '
                                      'image must have a transparent background."}'},
                         503: {"description": "No generator is configured on this server."}},
              summary="Generate a new background for a cut-out from a prompt (AI)")
    async def generate_background(self, request: Request, image: Annotated[UploadFile, File()],
                                  form: Annotated[GenerateForm, Form()]):
        if self.generator is None:
            raise ModelUnavailable("AI background generation is not available on this "
                                   f"server: the generator is {self.setup.features.get('generate')}.")
        decoded = await self._read_image(image)
        if not transparent_enough(decoded.alpha):
            raise InvalidImage(NOT_TRANSPARENT)
        options = GenerateOptions(**form.model_dump())
        w, h = options.output_size(*decoded.size)
        if w * h > self.settings.regular_max_pixels or max(w, h) > MAX_SIDE:
            raise InvalidParameter(f"Output size {w}x{h} is larger than this endpoint makes "
                                   f"({self.settings.regular_max_pixels:,} pixels, at most "
                                   f"{MAX_SIDE} a side).")
        await self.require_credits(request, self.settings.price_generate)
        try:
            out: np.ndarray = await self.generator.generate.remote(decoded.rgb, decoded.alpha,
                                                                   options)
        except BackPressureError:
            raise ServiceUnavailable("The generator is busy; retry shortly.",
                                     {"retry_after_s": 5}) from None
        png = await self.cpu.run(encode_png, out)
        await self.charge(request, Charge("image.generate", 1, self.settings.price_generate))
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})
