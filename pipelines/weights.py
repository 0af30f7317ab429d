"""Where a model's weights file lives on disk, and checking it.

The app never downloads: it looks the file up in the configured folders (and in rembg's own
model home, so models a user already fetched with rembg are reused) and reports what is missing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from pipelines.catalog import AssetSpec, ModelSpec, RembgSource


def rembg_home() -> Path:
    """rembg's model home, by rembg's own rules (U2NET_HOME > REMBG_HOME > XDG > ~/.rembg)."""
    if os.getenv("U2NET_HOME"):
        return Path(os.environ["U2NET_HOME"]).expanduser()
    xdg = os.getenv("XDG_DATA_HOME")
    default = Path(xdg) / "rembg" if xdg else Path("~/.rembg")
    return Path(os.getenv("REMBG_HOME", str(default))).expanduser()


def candidate_paths(spec: ModelSpec, search_dirs: Iterable[Path]) -> list[Path]:
    paths = [Path(d) / spec.weights.file for d in search_dirs]
    if isinstance(spec.weights.source, RembgSource):
        name = spec.weights.source.session
        home = rembg_home()
        paths += [home / "models" / name / f"{name}.onnx", home / f"{name}.onnx"]
    return paths


def find_weights(spec: ModelSpec, search_dirs: Iterable[Path]) -> Path | None:
    for path in candidate_paths(spec, search_dirs):
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def int8_refusal(spec: ModelSpec, path: Path) -> str | None:
    """None when the int8 build at `path` may serve: the catalog declares one, its quality
    gate passed and the file is byte for byte the verified build (its pinned sha256); else
    why not."""
    build = spec.weights.int8
    if build is None:
        return "no quality gate measured for it in the catalog"
    if not build.gate.passed:
        return (f"failed its quality gate (SAD {build.gate.sad_change_pct:+.1f} %, IoU "
                f"{build.gate.iou_change:+.4f})")
    if file_digest(path) != build.sha256:
        return (f"not the verified build (catalog: {build.sha256[:12]}...; other calibration "
                "images, or another onnxruntime)")
    return None


def find_int8(spec: ModelSpec, search_dirs: Iterable[Path]) -> Path | None:
    """The model's int8 build where one on disk may serve (`int8_refusal`); else None (the
    float weights serve)."""
    if spec.weights.int8 is None or not spec.weights.int8.gate.passed:
        return None  # no file to look at
    for folder in search_dirs:
        path = Path(folder) / spec.weights.int8_file
        if path.is_file() and int8_refusal(spec, path) is None:
            return path
    return None


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, spec: ModelSpec | AssetSpec) -> str | None:
    """None when the file matches the catalog's published checksum (or none is published),
    else a sentence saying what differs."""
    w = spec.weights
    if w.bytes is not None and path.stat().st_size != w.bytes:
        return f"{path.name}: size {path.stat().st_size} bytes, expected {w.bytes}"
    if w.sha256 is not None:
        got = file_digest(path, "sha256")
        return None if got == w.sha256 else f"{path.name}: sha256 {got}, expected {w.sha256}"
    if w.md5 is not None:
        got = file_digest(path, "md5")
        return None if got == w.md5 else f"{path.name}: md5 {got}, expected {w.md5}"
    return None
