"""Batch cut-outs of a folder of images: listing, the manifest, and one batch's work.

Pure Python (no Ray): `deployments/batch.py` runs `process_batch` in Ray Data actors; the
benchmark's plain loop calls it directly. Paths are fsspec URLs (a local folder, `file://`,
`s3://...` with s3fs installed, anything fsspec can list).

The output folder holds one file per input (same relative path, `.png`/`.webp`) and
`manifest.jsonl`, one JSON row per finished input:

    {"input": "shoes/a.jpg", "output": "shoes/a.png", "model": "u2netp", "status": "ok",
     "seconds": 0.41, "width": 1200, "height": 800, "error": null}

A run appends rows as batches finish, so an interrupted run is resumed by running it again:
inputs with an `ok` row (same model and format) and their output file present are skipped,
everything else (failed, never reached, or cut off mid-write) is done again. Outputs are written to a temporary name and
moved into place, so a file under its final name is always complete.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import fsspec
import numpy as np
from fsspec.core import url_to_fs

from pipelines.compose import Background
from pipelines.errors import ServiceError
from pipelines.images import DecodedImage
from pipelines.render import decode_job_image, render_cutout

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
MANIFEST = "manifest.jsonl"


@dataclass
class Row:
    input: str  # relative to the input root (posix)
    output: str | None  # relative to the output root
    model: str
    status: str  # "ok" | "failed"
    seconds: float
    width: int | None = None
    height: int | None = None
    error: str | None = None


def list_images(url: str) -> tuple[fsspec.AbstractFileSystem, str, list[str]]:
    """(filesystem, root, sorted relative paths of the images under `url`, recursively).
    `url` may also name a single image file."""
    fs, root = url_to_fs(url)
    root = root.rstrip("/") or "/"
    if fs.isfile(root):
        return fs, posixpath.dirname(root), [posixpath.basename(root)]
    if not fs.isdir(root):
        raise FileNotFoundError(f"{url}: no such file or folder")
    found = fs.find(root)
    rel = (posixpath.relpath(p, root) for p in found)
    return fs, root, sorted(p for p in rel
                            if p.lower().endswith(IMAGE_SUFFIXES)
                            and not any(part.startswith(".") for part in p.split("/")))


def output_name(rel_input: str, output_format: str) -> str:
    return posixpath.splitext(rel_input)[0] + "." + output_format


def read_manifest(fs: fsspec.AbstractFileSystem, out_root: str) -> dict[str, dict]:
    """The last row per input; a line cut short by an interruption is ignored."""
    path = posixpath.join(out_root, MANIFEST)
    rows: dict[str, dict] = {}
    if not fs.exists(path):
        return rows
    with fs.open(path, "rt") as f:
        for line in f:
            try:
                row = json.loads(line)
                rows[row["input"]] = row
            except (ValueError, KeyError, TypeError):
                continue
    return rows


def pending(inputs: Iterable[str], done: dict[str, dict], out_fs: fsspec.AbstractFileSystem,
            out_root: str, *, model: str, output_format: str) -> list[str]:
    """Inputs still to do: no `ok` row for this model and format, or its output file is gone.
    (The output folder is listed once, not probed per file: cheap on object stores too.)"""
    present = {posixpath.relpath(p, out_root) for p in out_fs.find(out_root)} \
        if out_fs.isdir(out_root) else set()
    todo = []
    for rel in inputs:
        row = done.get(rel) or {}
        if not (row.get("status") == "ok" and row.get("model") == model
                and row.get("output") == output_name(rel, output_format)
                and row["output"] in present):
            todo.append(rel)
    return todo


class ManifestWriter:
    """Appends rows to `manifest.jsonl`, flushed per batch so that a kill loses at most the
    rows of batches in flight (their inputs are simply done again)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, out_root: str) -> None:
        fs.makedirs(out_root, exist_ok=True)
        path = posixpath.join(out_root, MANIFEST)
        # Object stores cannot append: there the manifest is rewritten from memory per batch.
        self._append = "file" in _protocols(fs)
        self._fs, self._path = fs, path
        self._lines: list[str] = []
        if not self._append and fs.exists(path):
            self._lines = fs.cat_file(path).decode().splitlines(keepends=True)
            if self._lines and not self._lines[-1].endswith("\n"):
                self._lines[-1] += "\n"
        cut_short = self._append and fs.exists(path) and fs.size(path) > 0 and \
            fs.cat_file(path, start=fs.size(path) - 1) != b"\n"
        self._file = fs.open(path, "ab") if self._append else None
        if cut_short:
            self._file.write(b"\n")  # a line cut short by a kill stays a line of its own

    def write(self, rows: Iterable[dict]) -> None:
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
        if self._file is not None:
            self._file.write(text.encode())
            self._file.flush()
        else:
            self._lines.append(text)
            self._fs.pipe_file(self._path, "".join(self._lines).encode())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return set(proto) if isinstance(proto, (tuple, list)) else {proto}


def _put(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if "file" in _protocols(fs):  # atomic on a local or mounted shared folder
        tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:  # an object store's put is atomic already
        fs.pipe_file(path, data)


def process_batch(inputs: Sequence[str], *, in_url: str, out_url: str, model: str,
                  segment_batch: Callable[[list[np.ndarray]], list[np.ndarray]],
                  max_pixels: int, output_format: str = "png",
                  background: Background | None = None) -> list[Row]:
    """Cut out `inputs` (paths relative to `in_url`) and write them under `out_url`.

    The masks of the batch's decodable images come from one `segment_batch` call (one model
    run on the whole batch); each image is then composed and encoded exactly like an async
    job's output. A bad input gives a `failed` row with the reason, never an exception.
    """
    in_fs, in_root = url_to_fs(in_url)
    out_fs, out_root = url_to_fs(out_url)
    started = time.perf_counter()
    rows: dict[str, Row] = {}
    images: dict[str, DecodedImage] = {}
    for rel in inputs:
        try:
            images[rel] = decode_job_image(in_fs.cat_file(posixpath.join(in_root, rel)),
                                           max_pixels)
        except ServiceError as exc:
            rows[rel] = Row(rel, None, model, "failed", 0.0, error=exc.message)
        except OSError as exc:
            rows[rel] = Row(rel, None, model, "failed", 0.0, error=f"cannot read: {exc}")
    masks: list[np.ndarray] = []
    if images:
        try:
            masks = segment_batch([im.rgb for im in images.values()])
        except ServiceError as exc:
            rows.update((rel, Row(rel, None, model, "failed", 0.0, error=exc.message))
                        for rel in images)
            images = {}
    shared_s = (time.perf_counter() - started) / max(1, len(inputs))

    for rel, mask in zip(list(images), masks):
        t0 = time.perf_counter()
        image = images.pop(rel)
        width, height = image.size
        try:
            data, _ = render_cutout(image, mask, output_format=output_format,
                                    background=background)
            del image
            out_rel = output_name(rel, output_format)
            _put(out_fs, posixpath.join(out_root, out_rel), data)
        except (ServiceError, OSError) as exc:
            error = exc.message if isinstance(exc, ServiceError) else f"cannot write: {exc}"
            rows[rel] = Row(rel, None, model, "failed", round(shared_s, 4), width, height, error)
            continue
        rows[rel] = Row(rel, out_rel, model, "ok", round(shared_s + time.perf_counter() - t0, 4),
                        width, height)
    return [rows[rel] for rel in inputs]


def as_dicts(rows: Iterable[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
