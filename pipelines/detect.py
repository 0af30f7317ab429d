"""What is in a picture: the subject detector `model=auto` asks before it chooses a model.

CenterNet (MobileNetV3 backbone, 80 COCO classes, 512x512 in; `configs/models.yaml` says where
its weights come from) answers a heat map per class at 1/4 of its input and, per cell, the
distances from the cell's centre to the four sides of a box. `decode` turns them into boxes the
way the original graph does (a cell is a peak when it is the largest of its 3x3 neighbours; the
100 highest peaks), then drops boxes that overlap a higher one of the same class.

The input is the whole image stretched to 512x512, RGB in 0..255 (as the TF.js model was used).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

SIDE = 512  # the model's input
STRIDE = 4  # heat-map cell size in input pixels
INPUT, HEAT, SIZES = "tower_0/images", "tower_0/keypoints", "tower_0/wh"

COCO = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
ANIMALS = frozenset(COCO[14:24])  # bird .. giraffe
Kind = Literal["person", "animal", "object"]


@dataclass(frozen=True)
class Detection:
    label: str  # a COCO class name
    score: float  # the heat map's peak, 0..1
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the image's pixels, clipped to it

    @property
    def kind(self) -> Kind:
        if self.label == "person":
            return "person"
        return "animal" if self.label in ANIMALS else "object"

    @property
    def area(self) -> int:
        return max(0, self.box[2] - self.box[0]) * max(0, self.box[3] - self.box[1])


def prepare(rgb: np.ndarray) -> np.ndarray:
    """The model's input for `rgb`: 1 x 512 x 512 x 3 float32, RGB 0..255, stretched."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if max(h, w) > SIDE else cv2.INTER_LINEAR
    return cv2.resize(rgb, (SIDE, SIDE), interpolation=interp).astype(np.float32)[None]


def _peaks(heat: np.ndarray) -> np.ndarray:
    """The heat map with every cell that is not the maximum of its 3x3 neighbourhood zeroed."""
    pooled = cv2.dilate(heat, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return np.where(heat == pooled, heat, 0.0)


def decode(heat: np.ndarray, sizes: np.ndarray, width: int, height: int, *,
           min_score: float = 0.1, top_k: int = 100, overlap: float = 0.5) -> list[Detection]:
    """Boxes from the model's outputs (1 x 128 x 128 x 80 heat, 1 x 128 x 128 x 4 distances
    left/top/right/bottom in input pixels) for an image of `width` x `height`, best first."""
    _, gh, gw, classes = heat.shape
    peaks = np.stack([_peaks(np.ascontiguousarray(heat[0, :, :, c])) for c in range(classes)], -1)
    flat = peaks.reshape(-1)
    k = min(top_k, flat.size)
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.argsort(-flat[top], kind="stable")]
    top = top[flat[top] >= min_score]
    cls, cell = top % classes, top // classes
    ys, xs = cell // gw, cell % gw
    d = sizes[0, ys, xs]  # left, top, right, bottom
    cx, cy = xs * STRIDE, ys * STRIDE
    sx, sy = width / (gw * STRIDE), height / (gh * STRIDE)
    boxes = np.stack([(cx - d[:, 0]) * sx, (cy - d[:, 1]) * sy,
                      (cx + d[:, 2]) * sx, (cy + d[:, 3]) * sy], -1)
    boxes = np.clip(np.round(boxes), 0, [width, height, width, height]).astype(int)
    kept: list[Detection] = []
    for i in range(len(top)):
        box = (int(boxes[i, 0]), int(boxes[i, 1]), int(boxes[i, 2]), int(boxes[i, 3]))
        det = Detection(COCO[int(cls[i])], float(flat[top[i]]), box)
        if det.area and all(k.label != det.label or iou(k.box, box) < overlap for k in kept):
            kept.append(det)
    return kept


def iou(a: Sequence[int], b: Sequence[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class SubjectDetector:
    """The converted CenterNet in an ONNX Runtime session (CPU or GPU provider)."""

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 intra_op_threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))

    def run(self, prepared: np.ndarray, width: int, height: int,
            min_score: float = 0.1) -> list[Detection]:
        """Detections for an image of `width` x `height` already `prepare`d."""
        heat, sizes = self.session.run([HEAT, SIZES], {INPUT: prepared})
        return decode(heat, sizes, width, height, min_score=min_score)

    def detect(self, rgb: np.ndarray, min_score: float = 0.1) -> list[Detection]:
        return self.run(prepare(rgb), rgb.shape[1], rgb.shape[0], min_score)
