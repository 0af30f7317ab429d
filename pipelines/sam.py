"""Click and box prompts with a Segment-Anything-style model (MobileSAM-like, two ONNX files).

The encoder turns an image into an embedding once (the slow part, ~0.5 s on a CPU core); the
prompt decoder turns that embedding plus foreground/background points and/or a box into a mask
in a few tens of milliseconds. `PromptSegmenter.embed` is cached by the image's content hash, so
refining a mask with more clicks on the same image costs only decoder runs.

Conventions (SAM's ONNX export): the image is scaled so its long side is 1024, padded to
1024x1024 at the bottom/right, normalised with ImageNet mean/std on 0-255 values; prompt
coordinates are in that scaled frame; point labels 1 = foreground, 0 = background, 2/3 = a box's
top-left/bottom-right corner, -1 = padding (needed when there is no box); the decoder returns
logits at the original size (> 0: inside).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from pipelines.errors import InvalidParameter, ModelFileMissing, ModelUnavailable
from pipelines.segmenter import session_options

INPUT_SIZE = 1024
MASK_INPUT_SIZE = 256
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
MAX_POINTS = 32
MAX_DECODE_SIDE = 2048


@dataclass(frozen=True)
class Prompt:
    """Points as (x, y) in image pixels; `box` as (x0, y0, x1, y1)."""

    foreground: tuple[tuple[float, float], ...] = ()
    background: tuple[tuple[float, float], ...] = ()
    box: tuple[float, float, float, float] | None = None

    def __bool__(self) -> bool:
        return bool(self.foreground or self.background or self.box)

    def check(self, width: float, height: float) -> None:
        points = [*self.foreground, *self.background]
        if len(points) > MAX_POINTS:
            raise InvalidParameter(f"At most {MAX_POINTS} points per prompt.")
        for x, y in points + ([self.box[:2], self.box[2:]] if self.box else []):
            if not (np.isfinite(x) and np.isfinite(y)):
                raise InvalidParameter("Prompt coordinates must be finite numbers.")
            if not (0 <= x <= width and 0 <= y <= height):
                raise InvalidParameter(
                    f"Prompt point ({x:g}, {y:g}) is outside the {width}x{height} image.")
        if self.box and not (self.box[0] < self.box[2] and self.box[1] < self.box[3]):
            raise InvalidParameter("box must be x0,y0,x1,y1 with x0 < x1 and y0 < y1.")


def prompt_model_missing() -> ModelUnavailable:
    """What a request with clicks or a box gets where the prompt model is not served."""
    return ModelUnavailable("Click and box prompts need the prompt model, which is not being "
                            "served: run `bgremove models pull mobilesam` and redeploy.")


def parse_points(text: str | None) -> tuple[tuple[float, float], ...]:
    """'x,y;x,y' (or JSON-ish '[[x,y],[x,y]]') -> ((x, y), ...)."""
    if not text or not text.strip():
        return ()
    cleaned = text.replace("[", " ").replace("]", " ").replace(";", " ; ")
    numbers = [n for n in cleaned.replace(",", " ").replace(";", " ").split()]
    try:
        values = [float(n) for n in numbers]
    except ValueError:
        raise InvalidParameter(f"Points must be 'x,y;x,y': got {text[:80]!r}.") from None
    if len(values) % 2 or not all(np.isfinite(values)):
        raise InvalidParameter(f"Points must be 'x,y;x,y': got {text[:80]!r}.")
    return tuple(zip(values[::2], values[1::2]))


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    if not text or not text.strip():
        return None
    values = [v for xy in parse_points(text) for v in xy]
    if len(values) != 4:
        raise InvalidParameter(f"box must be 'x0,y0,x1,y1': got {text[:80]!r}.")
    return tuple(values)  # type: ignore[return-value]


def preprocess(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """(1x3x1024x1024 float32, scale from image pixels to the model's frame)."""
    h, w = rgb.shape[:2]
    scale = INPUT_SIZE / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR if scale > 1
                         else cv2.INTER_AREA)
    padded = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    padded[:nh, :nw] = (resized.astype(np.float32) - MEAN) / STD
    return padded.transpose(2, 0, 1)[None], scale


@dataclass
class Embedding:
    tensor: np.ndarray  # 1x256x64x64
    width: int
    height: int
    scale: float


@dataclass
class _Cache:
    size: int
    items: OrderedDict[str, Embedding] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: int = 0
    misses: int = 0


def content_key(rgb: np.ndarray) -> str:
    return hashlib.sha256(rgb.tobytes() + str(rgb.shape).encode()).hexdigest()


class PromptSegmenter:
    def __init__(self, encoder_path: str | Path, decoder_path: str | Path, *,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 intra_op_threads: int = 0, cache_size: int = 32) -> None:
        for path in (encoder_path, decoder_path):
            if not Path(path).is_file():
                raise ModelFileMissing(f"prompt model file {path} not found; "
                                       "run `bgremove models pull mobilesam`")
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        opts = session_options(intra_op_threads)
        self.encoder = ort.InferenceSession(str(encoder_path), opts, providers=chosen)
        self.decoder = ort.InferenceSession(str(decoder_path), opts, providers=chosen)
        self._cache = _Cache(cache_size)

    # ---- embedding (cached by content) ---------------------------------------------------
    def embed(self, rgb: np.ndarray) -> Embedding:
        key = content_key(rgb)
        cache = self._cache
        with cache.lock:
            hit = cache.items.get(key)
            if hit is not None:
                cache.items.move_to_end(key)
                cache.hits += 1
                return hit
            cache.misses += 1
        tensor, scale = preprocess(rgb)
        (out,) = self.encoder.run(None, {self.encoder.get_inputs()[0].name: tensor})
        emb = Embedding(out, rgb.shape[1], rgb.shape[0], scale)
        with cache.lock:
            cache.items[key] = emb
            while len(cache.items) > cache.size:
                cache.items.popitem(last=False)
        return emb

    def cache_stats(self) -> dict[str, int]:
        return {"hits": self._cache.hits, "misses": self._cache.misses,
                "entries": len(self._cache.items)}

    # ---- prompt -> mask ------------------------------------------------------------------
    def decode(self, emb: Embedding, prompt: Prompt) -> np.ndarray:
        """uint8 mask (255 inside) at the image's size for one prompt."""
        prompt.check(emb.width, emb.height)
        coords = [*prompt.foreground, *prompt.background]
        labels = [1.0] * len(prompt.foreground) + [0.0] * len(prompt.background)
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            coords += [(x0, y0), (x1, y1)]
            labels += [2.0, 3.0]
        else:
            coords.append((0.0, 0.0))
            labels.append(-1.0)
        # The decoder upsamples its 256x256 logits to `orig_im_size`: ask for at most
        # MAX_DECODE_SIDE a side and enlarge the 8-bit mask ourselves (a 100 MP image would
        # otherwise cost a 400 MB float map per call). Points stay in the 1024 frame, which
        # depends only on the aspect ratio.
        shrink = min(1.0, MAX_DECODE_SIDE / max(emb.width, emb.height))
        dw, dh = max(1, round(emb.width * shrink)), max(1, round(emb.height * shrink))
        feeds = {
            "image_embeddings": emb.tensor,
            "point_coords": (np.asarray(coords, np.float32) * emb.scale)[None],
            "point_labels": np.asarray(labels, np.float32)[None],
            "mask_input": np.zeros((1, 1, MASK_INPUT_SIZE, MASK_INPUT_SIZE), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.asarray([dh, dw], np.float32),
        }
        masks, scores = self.decoder.run(["masks", "iou_predictions"], feeds)[:2]
        best = int(np.argmax(scores[0])) if scores.size > 1 else 0
        logits = masks[0, best]
        # Soft edge over about one pixel of logit range, like a matte, not a hard threshold.
        mask = (np.clip(logits * 0.5 + 0.5, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        if (dw, dh) != (emb.width, emb.height):
            mask = cv2.resize(mask, (emb.width, emb.height), interpolation=cv2.INTER_LINEAR)
        return mask

    def segment(self, rgb: np.ndarray, prompt: Prompt, base: np.ndarray | None = None,
                mode: str = "replace") -> np.ndarray:
        """The mask for `prompt` on `rgb`.

        `replace`: SAM's mask for all the prompt's points and box together (needs a foreground
        point or a box). `refine`: `base` (a model's mask) corrected: the region a foreground
        click or the box selects is added, the region under each background click removed.
        """
        emb = self.embed(rgb)
        prompt.check(emb.width, emb.height)
        if mode == "replace" or base is None:
            if not prompt.foreground and prompt.box is None:
                raise InvalidParameter("A prompt needs at least one foreground point or a box.")
            return self.decode(emb, prompt)
        mask = base
        if prompt.foreground or prompt.box is not None:
            mask = np.maximum(mask, self.decode(emb, Prompt(prompt.foreground, (), prompt.box)))
        for point in prompt.background:
            mask = np.minimum(mask, 255 - self.decode(emb, Prompt((point,))))
        return mask
