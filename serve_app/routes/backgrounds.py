"""New backgrounds for a subject: `/image/backdrop/v1` (procedural or uploaded scenes, not
generative) and `/image/generate/v1` (spec 000's AI background generation)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from pipelines import effects, output, scene
from pipelines.errors import InvalidImage, InvalidParameter, ModelUnavailable
from pipelines.generate import MAX_SIDE, GenerateOptions, transparent_enough
from pipelines.images import DecodedImage, decode_image, encode_png
from serve_app.core.keys import Charge
from serve_app.gateway import calling
from serve_app.routes.images import ERRORS, PNG, read_upload
from serve_app.schemas import BackdropOptions, GenerateForm
from serve_app.services import Services, Svc

router = APIRouter()
NOT_TRANSPARENT = "The input image must have a transparent background."


async def _read_image(svc: Services, upload: UploadFile) -> DecodedImage:
    data = await read_upload(svc, upload)
    return await asyncio.to_thread(decode_image, data, svc.settings.regular_max_pixels)


@router.post("/image/backdrop/v1", response_class=Response, responses={**PNG, **ERRORS},
             summary="Place the subject into a studio scene (procedural or uploaded; not AI)")
async def backdrop(svc: Svc, request: Request, image: Annotated[UploadFile, File()],
                   options: Annotated[BackdropOptions, Form()],
                   scene_image: Annotated[UploadFile | None, File()] = None):
    decoded = await _read_image(svc, image)
    backdrop = await _read_image(svc, scene_image) if scene_image is not None else None
    price = svc.settings.price_backdrop
    await svc.credits.require(request, price)
    # A cut-out keeps its own alpha (clicks and a box still correct it); anything else is cut
    # out by the model first.
    if transparent_enough(decoded.alpha):
        alpha, prompt = decoded.alpha, options.prompt()
        if prompt:
            alpha = await svc.models.prompted_mask(decoded.rgb, prompt, alpha, options.prompt_mode)
    else:
        with svc.models.admitted(options.model):
            alpha = (await svc.models.mask_for(decoded, options))[1]
    w, h = decoded.size

    def place(mask: np.ndarray) -> np.ndarray:
        bg = (scene.fit_scene(backdrop.rgb, w, h) if backdrop is not None else
              scene.make_scene(options.scene, w, h, effects.parse_color(options.scene_color),
                               effects.parse_color(options.scene_color_end), options.seed))
        return scene.place(decoded.rgb, mask, bg, shadow_opacity=options.shadow_opacity,
                           light_wrap=options.light_wrap, color_match=options.color_match)

    def render() -> bytes:
        return output.finish(decoded.rgb, alpha, place, options, options.format)

    data = await svc.cpu.run(render)
    await svc.credits.charge(request, Charge("image.backdrop", 1, price))
    return Response(data, media_type=output.MEDIA_TYPES[options.format],
                    headers={"Cache-Control": "no-cache"})


@router.post("/image/generate/v1", response_class=Response,
             responses={**PNG, 400: {"description": 'Opaque input: {"message": "The input '
                                     'image must have a transparent background."}'},
                        503: {"description": "No generator is configured on this server."}},
             summary="Generate a new background for a cut-out from a prompt (AI)")
async def generate_background(svc: Svc, request: Request, image: Annotated[UploadFile, File()],
                              form: Annotated[GenerateForm, Form()]):
    generator = svc.models.generator
    if generator is None:
        raise ModelUnavailable("AI background generation is not available on this "
                               f"server: the generator is {svc.setup.features.get('generate')}.")
    decoded = await _read_image(svc, image)
    if not transparent_enough(decoded.alpha):
        raise InvalidImage(NOT_TRANSPARENT)
    options = GenerateOptions(**form.model_dump())
    w, h = options.output_size(*decoded.size)
    limit = svc.settings.regular_max_pixels
    if w * h > limit or max(w, h) > MAX_SIDE:
        raise InvalidParameter(f"Output size {w}x{h} is larger than this endpoint makes "
                               f"({limit:,} pixels, at most {MAX_SIDE} a side).")
    price = svc.settings.price_generate
    await svc.credits.require(request, price)
    with calling("The generator", retry_after_s=5):
        out: np.ndarray = await generator.generate.remote(decoded.rgb, decoded.alpha, options)
    png = await svc.cpu.run(encode_png, out)
    await svc.credits.charge(request, Charge("image.generate", 1, price))
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})
