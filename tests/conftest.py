"""Shared fixtures: a tiny generated ONNX segmenter, its catalog, test images, ../shared paths."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BGR_SHARED_DIR", REPO.parent / "shared"))
SHARED_MODELS = SHARED / "models"
SHARED_MEDIA = SHARED / "media"

needs_shared = pytest.mark.skipif(
    not (SHARED_MODELS.is_dir() and SHARED_MEDIA.is_dir()),
    reason=f"real models/media not found at {SHARED} (set BGR_SHARED_DIR)",
)

TINY_SIZE = 32
TINY_FAMILY = {
    "preprocess": {"height": TINY_SIZE, "width": TINY_SIZE, "resample": "bilinear", "scale": "unit"},
    "postprocess": {"activation": "none", "resample": "bilinear"},
}


def make_tiny_model(path: Path) -> Path:
    """A real ONNX graph: foreground probability = sigmoid(12 * (mean(R,G,B) - 0.5)).

    Bright pixels are 'subject', dark ones 'background'; batch axis is dynamic.
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, TINY_SIZE, TINY_SIZE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, TINY_SIZE, TINY_SIZE])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    gain = helper.make_tensor("gain", TensorProto.FLOAT, [], [12.0])
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
        helper.make_node("Sub", ["m", "half"], ["c"]),
        helper.make_node("Mul", ["c", "gain"], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[axes, half, gain])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tiny_catalog(tmp: Path) -> Path:
    """The project catalog plus a `tiny` model whose weights live in `tmp/models`."""
    data = yaml.safe_load((REPO / "configs" / "models.yaml").read_text())
    data["families"]["tiny"] = TINY_FAMILY
    data["models"].append({
        "id": "tiny", "name": "Tiny test model", "family": "tiny", "tier": "light",
        "weights": {"file": "tiny.onnx", "source": {"kind": "local"}},
    })
    path = tmp / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    return make_tiny_model(models / "tiny.onnx")


def disk_image(width: int = 96, height: int = 64, fg=(240, 220, 200), bg=(20, 40, 30)) -> np.ndarray:
    """A bright ellipse (the subject) on a dark, slightly textured background."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((xx - width / 2) / (width / 4)) ** 2 + ((yy - height / 2) / (height / 4)) ** 2 <= 1
    rng = np.random.default_rng(0)
    img = np.where(inside[..., None], np.array(fg), np.array(bg)).astype(np.int16)
    img += rng.integers(-6, 7, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(arr: np.ndarray | Image.Image, fmt: str = "PNG", **save) -> bytes:
    im = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()
