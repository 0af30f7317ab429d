"""Run a catalog model: image in, full-resolution alpha mask out.

`OnnxSegmenter` is driven entirely by the model's catalog entry (`ModelSpec`): the same class
serves rembg's U2-Net/IS-Net/BiRefNet files and any local ONNX file with declared
preprocessing. Batches are stacked into one inference call when the graph's batch dimension is
dynamic, otherwise run one by one.

A caller in another process sends the model only what it reads: `for_model` resizes the image
to the model's input size (the one resize the model would do itself) and `to_size` enlarges
the mask that comes back at the model's output size, so a 12 MP photo crosses Ray as 0.3 MB
instead of 36 MB and its mask as 0.1 MB instead of 12 MB, with the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from pipelines.catalog import ModelSpec, Postprocess, Preprocess
from pipelines.errors import InferenceError, ModelFileMissing
from pipelines.input_size import any_size, resized
from pipelines.precision import half_precision, resolve_precision

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}


def model_input(rgb: np.ndarray, p: Preprocess) -> np.ndarray:
    """The image as the model reads it: uint8 RGB at its input size (its only resize)."""
    if (rgb.shape[1], rgb.shape[0]) == (p.width, p.height):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((p.width, p.height), _RESAMPLE[p.resample]))


def for_model(rgb: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, bool]:
    """What to send a model replica for `rgb`, and whether to ask for its mask at the model's
    output size (`native`, then enlarged with `to_size`): the model's input-size image when it
    has fewer pixels than `rgb`, else `rgb` itself (and a full-size mask back)."""
    p = spec.preprocess
    if p.width * p.height >= rgb.shape[0] * rgb.shape[1]:
        return rgb, False
    return model_input(rgb, p), True


def to_size(mask: np.ndarray, spec: ModelSpec, size: tuple[int, int]) -> np.ndarray:
    """A mask at the model's output size enlarged to `size` = (width, height), as the model's
    own postprocessing would have (the same pixels)."""
    if (mask.shape[1], mask.shape[0]) == size:
        return mask
    im = Image.fromarray(mask, mode="L").resize(size, _RESAMPLE[spec.postprocess.resample])
    return np.asarray(im)


def preprocess(rgb: np.ndarray, p: Preprocess) -> np.ndarray:
    """uint8 H x W x 3 RGB -> float32 tensor of shape [C,H,W] or [H,W,C] (no batch axis)."""
    x: np.ndarray = np.asarray(model_input(rgb, p), dtype=np.float32)
    if p.scale == "unit":
        x = x / 255.0
    elif p.scale == "max":
        x = x / max(float(x.max()), 1e-6)
    if p.channel_order == "bgr":
        x = x[:, :, ::-1]
    x = (x - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    if p.post_divide != 1.0:
        x = x / p.post_divide
    if p.layout == "nchw":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def postprocess(raw: np.ndarray, q: Postprocess, size: tuple[int, int] | None) -> np.ndarray:
    """One model output (no batch axis) -> uint8 H x W mask at `size` = (width, height), or at
    the model's output size for None."""
    channel_axis = 0 if q.layout == "nchw" else -1
    if raw.ndim == 2:
        raw = raw[None] if q.layout == "nchw" else raw[..., None]
    if q.activation == "softmax":
        raw = _softmax(raw, channel_axis)
    prob = np.take(raw, q.channel, axis=channel_axis).astype(np.float32)
    if q.activation == "sigmoid":
        prob = 1.0 / (1.0 + np.exp(-prob))
    prob = np.nan_to_num(prob, nan=0.0)
    if q.normalize == "minmax":
        lo, hi = float(prob.min()), float(prob.max())
        prob = (prob - lo) / (hi - lo) if hi - lo > 1e-6 else np.zeros_like(prob)
    # rounded, not truncated: a probability of 0.999 is an opaque 255, not a see-through 254
    mask = Image.fromarray(np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    if size is not None and mask.size != size:
        mask = mask.resize(size, _RESAMPLE[q.resample])
    return np.asarray(mask)


_SHARED_ARENA: list[bool] = []


def _share_cpu_arena() -> None:
    """One CPU memory arena for every session of this process (registered once): a replica's
    two sessions (concurrent and solo) otherwise each keep their own peak, e.g. u2netp's
    ~470 MB twice after a run (measured: 969 -> 510 MiB, the same latency)."""
    if not _SHARED_ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                 ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _SHARED_ARENA.append(True)


def session_options(intra_op_threads: int = 0, memory_arena: bool = True) -> ort.SessionOptions:
    """`memory_arena=False`: memory is returned after every run instead of kept for the next
    (a large model's idle memory falls ~5x; each run is slower on CPU)."""
    opts = ort.SessionOptions()
    if memory_arena:
        _share_cpu_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
    else:
        opts.enable_cpu_mem_arena = False
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads  # 0 = onnxruntime decides (all cores)
    opts.inter_op_num_threads = 1
    # Idle pool threads that spin burn the cores the ingress and other replicas need; on a
    # shared CPU box that costs more than the wake-up latency it saves.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


class OnnxSegmenter:
    def __init__(
        self,
        spec: ModelSpec,
        weights_path: str | Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        solo_threads: int = 0,
        precision: str = "auto",
        memory_arena: bool = True,
        int8_path: str | Path | None = None,
        input_size: int | None = None,
    ) -> None:
        """`solo_threads` > 0 opens a second session with that many threads, used for a call
        that runs alone (`predict_batch(..., solo=True)`): one request gets every core, while
        concurrent requests each run single-threaded side by side.

        `precision`: `fp16` runs a half-precision copy of the graph (made in memory, float32
        in and out), `fp32` the file as it is, `int8` the verified int8 build at `int8_path`
        (`weights.find_int8`), `auto` fp16 on a GPU provider and on CPU int8 where `int8_path`
        is given, else fp32.
        `memory_arena`: see `session_options`.
        `input_size`: run the model with this longer input side instead of its catalog size
        (the graph's pinned sizes freed in memory, `pipelines.input_size`; float graphs of
        channels-first models only: `auto` then skips an int8 build, `int8` is refused).
        """
        path = Path(weights_path)
        if not path.is_file():
            raise ModelFileMissing(
                f"model {spec.id!r}: weights file {path} not found; "
                f"run `bgremove models pull {spec.id}`"
            )
        self.spec = spec
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        if input_size is not None and precision == "auto":
            int8_path = None  # the int8 build runs at the catalog size only: float instead
        self.precision = resolve_precision(precision, chosen[0], int8_path is not None)
        graph: str | bytes
        if self.precision == "fp16":
            graph = half_precision(path)
        elif self.precision == "int8":
            graph = str(int8_path)
        else:
            graph = str(path)
        if input_size is not None:
            if self.precision == "int8":  # its sizes were folded into constants when quantised
                raise ValueError(f"model {spec.id!r}: input_size runs float graphs only "
                                 "(precision fp32 or fp16)")
            spec = self.spec = resized(spec, input_size)
            graph = any_size(graph if isinstance(graph, bytes) else Path(graph),
                             not_image=spec.preprocess.extra_inputs)
        self.session = ort.InferenceSession(
            graph, sess_options=session_options(intra_op_threads, memory_arena), providers=chosen
        )
        self.solo_session = (
            ort.InferenceSession(graph, sess_options=session_options(solo_threads, memory_arena),
                                 providers=chosen)
            if solo_threads > 0 and solo_threads != intra_op_threads else self.session
        )
        # the image input: the one input the catalog does not fill itself (a converted graph
        # lists its inputs in its own order, e.g. RVM's `downsample_ratio` before `src`)
        inp = next(i for i in self.session.get_inputs()
                   if i.name not in spec.preprocess.extra_inputs)
        self._input_name = inp.name
        self._extra = {name: np.full(x.shape, x.value, np.float32)
                       for name, x in spec.preprocess.extra_inputs.items()}
        self.dynamic_batch = not isinstance(inp.shape[0], int)
        # Only the output the mask is read from is fetched (IS-Net graphs have 7 more).
        self._output_name = self.session.get_outputs()[spec.postprocess.output_index].name
        self.providers = self.session.get_providers()

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        return self.predict_batch([rgb])[0]

    def predict_batch(self, images: Sequence[np.ndarray], *, solo: bool = False,
                      native: Sequence[bool] = ()) -> list[np.ndarray]:
        """One mask per image, at the image's size, or at the model's output size where
        `native[i]` (see `for_model`)."""
        session = self.solo_session if solo else self.session
        tensors = [preprocess(img, self.spec.preprocess) for img in images]
        if self.dynamic_batch and len(tensors) > 1:
            raws = self._run(session, np.stack(tensors))
        else:
            raws = np.concatenate([self._run(session, t[None]) for t in tensors])
        native = list(native) or [False] * len(images)
        return [
            postprocess(raw, self.spec.postprocess, None if at_model else (img.shape[1], img.shape[0]))
            for raw, img, at_model in zip(raws, images, native)
        ]

    def _run(self, session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
        try:
            (output,) = session.run([self._output_name], {self._input_name: batch, **self._extra})
        except Exception as exc:
            raise InferenceError(f"model {self.spec.id!r} failed: {exc}") from None
        return output
