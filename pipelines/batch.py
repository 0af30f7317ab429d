"""Batch cut-outs of a folder of images: listing, the manifest, and one batch's work.

Pure Python (no Ray): `serve_app/batch.py` runs `process_batch` in Ray Data actors; the
benchmark's plain loop calls it directly. Paths are fsspec URLs (a local folder, `file://`,
`s3://...` with s3fs installed, anything fsspec can list).

The output folder holds one file per input (same relative path, `.png`/`.webp`) and
`manifest.jsonl`, one JSON row per finished input:

    {"input": "shoes/a.jpg", "output": "shoes/a.png", "model": "u2netp", "status": "ok",
     "seconds": 0.41, "width": 1200, "height": 800, "error": null}

A run appends rows as batches finish, so an interrupted run is resumed by running it again:
inputs with an `ok` row (same model and format) and their output file present are skipped,
everything else (failed, never reached, or cut off mid-write) is done again. Outputs are written
to a temporary name and moved into place, so a file under its final name is always complete.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
from fsspec.core import url_to_fs

from pipelines.compose import Background
from pipelines.errors import ServiceError
from pipelines.images import DecodedImage
from pipelines.render import decode_job_image, render_cutout

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
MANIFEST = "manifest.jsonl"
MANIFEST_PARTS = "manifest.jsonl.d"  # object stores cannot append: one part per flush


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


def output_names(inputs: Iterable[str], output_format: str) -> dict[str, str]:
    """Input -> output path: `a/b.jpg` -> `a/b.png`; inputs that would share a name
    (`b.jpg` and `b.png`) keep their whole name instead (`b.jpg.png`, `b.png.png`)."""
    inputs = list(inputs)
    plain = {rel: posixpath.splitext(rel)[0] + "." + output_format for rel in inputs}
    seen: dict[str, int] = {}
    for name in plain.values():
        seen[name] = seen.get(name, 0) + 1
    return {rel: name if seen[name] == 1 else f"{rel}.{output_format}"
            for rel, name in plain.items()}


def check_folders(in_fs: fsspec.AbstractFileSystem, in_root: str,
                  out_fs: fsspec.AbstractFileSystem, out_root: str) -> None:
    """The output may not be the input folder or inside it: a resume would read the cut-outs
    as new inputs, and the same folder would overwrite its own images."""
    if _protocols(in_fs) & _protocols(out_fs):
        a, b = in_root.rstrip("/") + "/", out_root.rstrip("/") + "/"
        if b.startswith(a):
            raise ValueError(f"the output folder {out_root} is the input folder or inside it; "
                             "choose a folder outside the input")


def read_manifest(fs: fsspec.AbstractFileSystem, out_root: str) -> dict[str, dict]:
    """The last row per input (`manifest.jsonl`, then the parts an object store got, in
    order); a line cut short by an interruption is ignored."""
    paths = [posixpath.join(out_root, MANIFEST)]
    parts = posixpath.join(out_root, MANIFEST_PARTS)
    if fs.isdir(parts):
        paths += sorted(fs.find(parts))
    rows: dict[str, dict] = {}
    for path in paths:
        if not fs.exists(path):
            continue
        with fs.open(path, "rt") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    rows[row["input"]] = row
                except (ValueError, KeyError, TypeError):
                    continue
    return rows


def pending(outputs: dict[str, str], done: dict[str, dict],
            out_fs: fsspec.AbstractFileSystem, out_root: str, *, model: str) -> list[str]:
    """Inputs still to do: no `ok` row for this model and output name (so format), or its
    output file is gone. (The output folder is listed once, not probed per file.)"""
    present = {posixpath.relpath(p, out_root) for p in out_fs.find(out_root)} \
        if out_fs.isdir(out_root) else set()
    todo = []
    for rel, out in outputs.items():
        row = done.get(rel) or {}
        if not (row.get("status") == "ok" and row.get("model") == model
                and row.get("output") == out and out in present):
            todo.append(rel)
    return todo


class ManifestWriter:
    """Appends rows to `manifest.jsonl`, flushed per batch so that a kill loses at most the
    rows of batches in flight (their inputs are simply done again). On an object store, which
    cannot append, rows are buffered and written as a new part under `manifest.jsonl.d/`
    every `flush_s` seconds (and at the end)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, out_root: str,
                 flush_s: float = 30.0) -> None:
        fs.makedirs(out_root, exist_ok=True)
        path = posixpath.join(out_root, MANIFEST)
        self._append = "file" in _protocols(fs)
        self._fs, self._root, self._flush_s = fs, out_root, flush_s
        self._lines: list[str] = []
        self._last = time.monotonic()
        self._run = f"{time.time_ns():020d}"  # parts sort in the order they were written
        self._part = 0
        cut_short = self._append and fs.exists(path) and fs.size(path) > 0 and \
            fs.cat_file(path, start=fs.size(path) - 1) != b"\n"
        self._file = fs.open(path, "ab") if self._append else None
        if cut_short and self._file is not None:
            self._file.write(b"\n")  # a line cut short by a kill stays a line of its own

    def write(self, rows: Iterable[dict]) -> None:
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
        if self._file is not None:
            self._file.write(text.encode())
            self._file.flush()
            return
        self._lines.append(text)
        if time.monotonic() - self._last >= self._flush_s:
            self._flush_part()

    def _flush_part(self) -> None:
        if self._lines:
            name = f"{self._run}-{self._part:06d}.jsonl"
            self._fs.pipe_file(posixpath.join(self._root, MANIFEST_PARTS, name),
                               "".join(self._lines).encode())
            self._lines, self._part = [], self._part + 1
        self._last = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self._flush_part()


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


def process_batch(inputs: Sequence[str], outputs: Sequence[str] | None = None, *,
                  in_url: str, out_url: str, model: str,
                  segment_batch: Callable[[list[np.ndarray]], list[np.ndarray]],
                  max_pixels: int, output_format: str = "png",
                  background: Background | None = None) -> list[Row]:
    """Cut out `inputs` (paths relative to `in_url`) and write them under `out_url` as
    `outputs` (relative paths; default `output_names(inputs, output_format)`).

    The masks of the batch's decodable images come from one `segment_batch` call (one model
    run on the whole batch); each image is then composed and encoded exactly like an async
    job's output. A bad input gives a `failed` row with the reason, never an exception.
    """
    in_fs, in_root = url_to_fs(in_url)
    out_fs, out_root = url_to_fs(out_url)
    names = dict(zip(inputs, outputs)) if outputs is not None else output_names(inputs,
                                                                                output_format)
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
            out_rel = names[rel]
            _put(out_fs, posixpath.join(out_root, out_rel), data)
        except (ServiceError, OSError) as exc:
            error = exc.message if isinstance(exc, ServiceError) else f"cannot write: {exc}"
            rows[rel] = Row(rel, None, model, "failed", round(shared_s, 4), width, height, error)
            continue
        rows[rel] = Row(rel, out_rel, model, "ok", round(shared_s + time.perf_counter() - t0, 4),
                        width, height)
    return [rows[rel] for rel in inputs]

