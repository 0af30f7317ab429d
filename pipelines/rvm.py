"""Robust Video Matting over a clip: the recurrent state carried from frame to frame.

RVM (converted from its TF.js export at `bgremove models pull rvm`) takes a frame (NHWC RGB in
0..1), four recurrent states and a downsample ratio, and gives alpha, foreground and the next
states. The first frame starts from zero states (a 1x1 map per state broadcasts in the graph).

A clip is cut into chunks so that several replicas can work on it at once: each chunk starts
with `warmup` frames taken from the chunk before, whose outputs are dropped, so that its state
has settled by the chunk's first frame (`chunks`; `bench/bench_rvm_video.py` measures how many
frames make a seam invisible). Frames are matted at a working size of at most `WORK_SIDE` pixels
on the longest side, the network itself at `INTERNAL_SIDE` (the ratio RVM's authors pick by
resolution); the caller enlarges the masks to the frame size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import cv2
import numpy as np

STATES = (("r1i", 16), ("r2i", 20), ("r3i", 40), ("r4i", 64))
OUTPUTS = ("pha", "fgr", "r1o", "r2o", "r3o", "r4o")
T = TypeVar("T")
WORK_SIDE = 640  # frames are sent at most this large (longest side)
INTERNAL_SIDE = 320  # the network's own resolution (longest side), before its guided filter


def work_size(width: int, height: int, side: int = WORK_SIDE) -> tuple[int, int]:
    """(width, height) of the frames sent: the frame, shrunk to `side` on its longest side."""
    s = min(1.0, side / max(width, height))
    return max(1, round(width * s)), max(1, round(height * s))


def ratio_for(width: int, height: int, internal: int = INTERNAL_SIDE) -> float:
    """RVM's downsample ratio for frames of this size: the network runs at `internal` pixels
    on the longest side (never upsampled)."""
    return min(1.0, internal / max(width, height))


def to_work(rgb: np.ndarray) -> np.ndarray:
    w, h = work_size(rgb.shape[1], rgb.shape[0])
    if (w, h) == (rgb.shape[1], rgb.shape[0]):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


class RecurrentMatter:
    """Runs RVM frame after frame on an ONNX Runtime session of the converted graph."""

    def __init__(self, session) -> None:  # an onnxruntime.InferenceSession
        self.session = session

    @staticmethod
    def zero_state() -> dict[str, np.ndarray]:
        return {name: np.zeros((1, 1, 1, channels), np.float32) for name, channels in STATES}

    def step(self, rgb: np.ndarray, state: dict[str, np.ndarray], ratio: float
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The alpha (uint8, the frame's size) of one frame and the state for the next."""
        alpha, _, nxt = self.matte(rgb, state, ratio)
        return alpha, nxt

    def matte(self, rgb: np.ndarray, state: dict[str, np.ndarray], ratio: float
              ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """`step` with RVM's own foreground estimate (uint8 RGB, the frame's size)."""
        src = (rgb.astype(np.float32) / 255.0)[None]
        pha, fgr, *nxt = self.session.run(list(OUTPUTS), {
            "src": src, "downsample_ratio": np.array(ratio, np.float32), **state})
        alpha = np.clip(pha[0, :, :, 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        colours = np.clip(fgr[0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return alpha, colours, {name: s for (name, _), s in zip(STATES, nxt)}

    def run(self, frames: Sequence[np.ndarray], warmup: int = 0,
            ratio: float | None = None) -> list[np.ndarray]:
        """Alphas of `frames[warmup:]`, the state carried through all of them from zero."""
        if not frames:
            return []
        h, w = frames[0].shape[:2]
        ratio = ratio_for(w, h) if ratio is None else ratio
        state = self.zero_state()
        out = []
        for i, rgb in enumerate(frames):
            if rgb.shape[:2] != (h, w):
                raise ValueError("every frame of a sequence must have the same size")
            alpha, state = self.step(rgb, state, ratio)
            if i >= warmup:
                out.append(alpha)
        return out


@dataclass(frozen=True)
class Chunk(Generic[T]):
    """`frames` to run in order; the first `warmup` of them only settle the state."""

    frames: list[T]
    warmup: int


def chunks(frames: Iterable[T], size: int, warmup: int) -> Iterator[Chunk[T]]:
    """Consecutive chunks of `size` frames, each after the first led by the `warmup` frames
    before it (from earlier chunks: as many as there are)."""
    if size < 1 or warmup < 0:
        raise ValueError("chunk size must be >= 1 and warm-up >= 0")
    tail: deque[T] = deque(maxlen=warmup)  # the last `warmup` frames sent as a chunk's own
    current: list[T] = []
    for frame in frames:
        current.append(frame)
        if len(current) == size:
            yield Chunk([*tail, *current], len(tail))
            tail.extend(current)
            current = []
    if current:
        yield Chunk([*tail, *current], len(tail))
