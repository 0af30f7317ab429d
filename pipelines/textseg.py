"""Text prompts (`text_prompt` on /v1/jobs): which parts of the cut-out the given terms name.

An open-vocabulary backend turns (image, terms) into one probability map per term; `select`
keeps the part of the model's mask that the matched terms cover and reports which terms were
found. The backend behind the interface is CLIPSeg (transformers), loaded from a local folder
with hub access off: nothing is downloaded while serving. `torch` and `transformers` are
imported only when a backend is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipelines.errors import ModelFileMissing

WORK_SIDE = 1024


def split_terms(text: str) -> list[str]:
    """'person, handbag ,' -> ['person', 'handbag']."""
    return [t.strip() for t in text.split(",") if t.strip()]


class TermMaps(Protocol):
    def heatmaps(self, rgb: np.ndarray, terms: list[str]) -> np.ndarray:
        """float32 (len(terms), H, W) in [0, 1] at the image's size."""


class ClipSegBackend:
    def __init__(self, model_dir: str | Path, device: str = "cpu", threads: int = 0) -> None:
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ModelFileMissing(f"text_prompt model folder {path} has no config.json (a "
                                   "CLIPSeg checkpoint saved with save_pretrained is expected)")
        import torch  # noqa: PLC0415
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor  # noqa: PLC0415

        if threads:
            torch.set_num_threads(threads)
        self.torch, self.device = torch, device
        self.processor = CLIPSegProcessor.from_pretrained(path, local_files_only=True)
        self.model = CLIPSegForImageSegmentation.from_pretrained(
            path, local_files_only=True).eval().to(device)

    def heatmaps(self, rgb: np.ndarray, terms: list[str]) -> np.ndarray:
        from PIL import Image  # noqa: PLC0415

        h, w = working_size(rgb.shape[1], rgb.shape[0])
        image = Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR)
        inputs = self.processor(text=terms, images=[image] * len(terms), padding=True,
                                truncation=True, return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            logits = self.model(**inputs).logits
        probs = self.torch.sigmoid(logits).reshape(len(terms), *logits.shape[-2:]).cpu().numpy()
        return np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in probs])


def working_size(width: int, height: int) -> tuple[int, int]:
    """(height, width) of the maps: the image's, at most WORK_SIDE on the long side (the maps
    are coarse anyway; a 100 MP image must not cost 16 full-size float maps)."""
    s = min(1.0, WORK_SIDE / max(width, height))
    return max(1, round(height * s)), max(1, round(width * s))


def select(maps: np.ndarray, terms: list[str], base: np.ndarray, *, threshold: float = 0.4,
           min_area: float = 0.002) -> tuple[np.ndarray, dict[str, list[str]]]:
    """(the base mask kept only where a matched term points, {"matched", "unmatched"}).

    A term matches when at least `min_area` of the image has probability >= `threshold`. The
    matched terms' regions are joined, widened by ~2 % of the image so that the cut-out's own
    edge (finer than CLIPSeg's 352x352 maps) decides the outline, and softened."""
    h, w = maps.shape[1:]  # the maps' size (may be smaller than the base mask's)
    matched = [t for t, m in zip(terms, maps) if (m >= threshold).mean() >= min_area]
    report = {"matched": matched, "unmatched": [t for t in terms if t not in matched]}
    if not matched:
        return np.zeros_like(base), report
    region: np.ndarray = np.zeros((h, w), np.uint8)
    for term, heat in zip(terms, maps):
        if term in matched:
            region |= (heat >= threshold).astype(np.uint8)
    r = max(1, round(0.02 * max(h, w)))
    region = cv2.dilate(region * 255, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    region = cv2.GaussianBlur(region, (0, 0), r / 2)
    if region.shape != base.shape:
        region = cv2.resize(region, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.minimum(base, region), report
