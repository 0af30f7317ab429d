"""AI backgrounds: a generator paints the transparent part of a cut-out from a prompt, then the
subject's own pixels go back on top (exactly, where it is opaque) with a contact shadow and
light-wrapped edges (`pipelines.scene.place`).

`Generator` is the one interface; `DiffusersInpainter` implements it with any diffusers
inpainting pipeline (Stable Diffusion 1.5/2 inpainting, SDXL inpainting, ...) saved in a local
folder, loaded with hub access off. `torch` and `diffusers` are imported only when it is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipelines.errors import InvalidParameter, ModelFileMissing
from pipelines.scene import place

MAX_SIDE = 4096


@dataclass(frozen=True)
class GenerateOptions:
    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    steps: int = 25
    guidance_scale: float = 7.5
    width: int | None = None  # output size; default the input's
    height: int | None = None
    shadow_opacity: float = 0.5
    light_wrap: float = 0.3

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        if self.width and self.height:
            return self.width, self.height
        if self.width:
            return self.width, max(1, round(height * self.width / width))
        if self.height:
            return max(1, round(width * self.height / height)), self.height
        return width, height


class Generator(Protocol):
    def paint(self, rgb: np.ndarray, hole: np.ndarray, options: GenerateOptions) -> np.ndarray:
        """An RGB scene of `rgb`'s size: `hole` (uint8, 255 = generate) painted from the
        prompt, the rest kept as context."""


def transparent_enough(alpha: np.ndarray | None) -> bool:
    """The contract's "transparent background": some pixels at least half transparent."""
    return alpha is not None and float((alpha < 128).mean()) >= 0.01


def generate(rgb: np.ndarray, alpha: np.ndarray, generator: Generator,
             options: GenerateOptions) -> np.ndarray:
    """RGB at the output size: the generated scene with the subject placed back on it."""
    if not options.prompt.strip():
        raise InvalidParameter("prompt must not be empty.")
    w, h = options.output_size(alpha.shape[1], alpha.shape[0])
    if max(w, h) > MAX_SIDE:
        raise InvalidParameter(f"Output size {w}x{h} is larger than {MAX_SIDE} pixels a side.")
    if (w, h) != (alpha.shape[1], alpha.shape[0]):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA)
    # Generate a little into the subject's soft edge too, so the new scene meets it cleanly.
    hole = cv2.dilate((alpha < 250).astype(np.uint8) * 255, np.ones((3, 3), np.uint8))
    context = np.where(alpha[..., None] > 0, rgb, 127).astype(np.uint8)
    scene = generator.paint(context, hole, options)
    return place(rgb, alpha, scene, shadow_opacity=options.shadow_opacity,
                 light_wrap=options.light_wrap)


class DiffusersInpainter:
    def __init__(self, model_dir: str | Path, device: str = "cpu",
                 dtype: str = "auto") -> None:
        path = Path(model_dir)
        if not (path / "model_index.json").is_file():
            raise ModelFileMissing(f"generator folder {path} has no model_index.json (a "
                                   "diffusers inpainting pipeline saved with save_pretrained)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub while serving
        import torch  # noqa: PLC0415
        from diffusers import AutoPipelineForInpainting  # noqa: PLC0415

        torch_dtype = (torch.float16 if (dtype == "fp16" or (dtype == "auto" and device != "cpu"))
                       else torch.float32)
        self.torch, self.device = torch, device
        self.pipe = AutoPipelineForInpainting.from_pretrained(
            path, local_files_only=True, dtype=torch_dtype).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        unet = self.pipe.unet.config
        self.native = int(unet.sample_size * self.pipe.vae_scale_factor)  # e.g. 512, 1024
        self.multiple = int(self.pipe.vae_scale_factor) * 2 ** (len(unet.block_out_channels) - 1)

    def paint(self, rgb: np.ndarray, hole: np.ndarray, options: GenerateOptions) -> np.ndarray:
        from PIL import Image  # noqa: PLC0415

        h, w = rgb.shape[:2]
        # The model's own resolution on the long side, both sides a multiple of what it needs.
        s = self.native / max(w, h)
        gw = max(self.multiple, round(w * s / self.multiple) * self.multiple)
        gh = max(self.multiple, round(h * s / self.multiple) * self.multiple)
        generator = (self.torch.Generator(device="cpu").manual_seed(options.seed)
                     if options.seed is not None else None)
        out = self.pipe(
            prompt=options.prompt, negative_prompt=options.negative_prompt or None,
            image=Image.fromarray(rgb).resize((gw, gh), Image.Resampling.LANCZOS),
            mask_image=Image.fromarray(hole).resize((gw, gh), Image.Resampling.BILINEAR),
            num_inference_steps=options.steps, guidance_scale=options.guidance_scale,
            height=gh, width=gw, generator=generator, output_type="np",
        ).images[0]
        scene = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
        return cv2.resize(scene, (w, h), interpolation=cv2.INTER_CUBIC)
