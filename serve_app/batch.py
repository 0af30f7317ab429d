"""Batch runs with Ray Data: a folder (or any fsspec URL) of images to cut-outs and a manifest.

    bgremove batch photos/ cutouts/ --model u2netp --workers 2
    bgremove batch s3://bucket/in s3://bucket/out --model birefnet-general --gpus-per-worker 1 \\
        --address auto

A thin Ray wrapper: the driver lists the inputs and drops those the manifest already has
(`pipelines.batch`), Ray Data streams the remaining paths through a pool of `CutoutWorker`
actors (each loads the catalog model once, runs it on a batch of images, writes the outputs),
and the driver appends every finished row to `manifest.jsonl` as it arrives. Only paths and
rows travel through Ray; the images are read and written by the actors.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fsspec.core import url_to_fs

from pipelines import batch
from pipelines.catalog import load_catalog
from pipelines.compose import Background
from pipelines.errors import ModelFileMissing, UnknownModel
from pipelines.segmenter import OnnxSegmenter
from pipelines.weights import find_int8, find_weights

GPU_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


class CutoutWorker:
    """One Ray Data actor: the model's ONNX session, loaded once, for every batch it gets."""

    def __init__(self, *, model: str, catalog_path: str, search_dirs: list[str], threads: int,
                 gpu: bool, in_url: str, out_url: str, max_pixels: int, output_format: str,
                 bg_color: str | None) -> None:
        spec = load_catalog(catalog_path).get(model)
        path = find_weights(spec, [Path(d) for d in search_dirs])
        if path is None:
            raise ModelFileMissing(f"model {model!r}: no weights file on this node "
                                   f"(searched {', '.join(search_dirs)}); "
                                   f"run `bgremove models pull {model}`")
        self.segmenter = OnnxSegmenter(spec, path, intra_op_threads=threads,
                                       providers=GPU_PROVIDERS if gpu else ["CPUExecutionProvider"],
                                       int8_path=find_int8(spec, [Path(d) for d in search_dirs]))
        background = Background(type="color", color=bg_color) if bg_color else None
        self._kwargs = dict(in_url=in_url, out_url=out_url, model=model, max_pixels=max_pixels,
                            output_format=output_format, background=background)

    def __call__(self, items: dict) -> dict:
        rows = batch.process_batch([str(p) for p in items["input"]],
                                   [str(p) for p in items["output"]],
                                   segment_batch=self.segmenter.predict_batch, **self._kwargs)
        return {name: [getattr(r, name) for r in rows] for name in batch.Row.__dataclass_fields__}


@dataclass(frozen=True)
class Summary:
    listed: int  # images under the input URL
    skipped: int  # already done by an earlier run (manifest row `ok`, output present)
    ok: int
    failed: int
    seconds: float  # this run's wall time, Ray start-up and model loading included
    ray_start_s: float = 0.0  # of which starting (or joining) Ray

    @property
    def images_per_s(self) -> float:
        """Throughput of the processing itself (after Ray is up; model loading included)."""
        busy = self.seconds - self.ray_start_s
        return (self.ok + self.failed) / busy if busy > 0 else 0.0


def run_batch(in_url: str, out_url: str, *, model: str, catalog_path: str,
              search_dirs: list[str], max_pixels: int, workers: int = 1,
              threads_per_worker: int = 1, gpus_per_worker: float = 0, batch_size: int = 4,
              output_format: str = "png", bg_color: str | None = None,
              address: str | None = None,
              on_row: Callable[[dict], None] | None = None) -> Summary:
    """Process every image under `in_url` not yet done; rows go to `out_url`/manifest.jsonl."""
    import ray  # noqa: PLC0415  (the CLI imports this module only for `bgremove batch`)

    started = time.perf_counter()
    catalog = load_catalog(catalog_path)
    if model not in catalog.ids:  # before anything starts
        raise UnknownModel(f"unknown model {model!r}; the catalog has: {', '.join(catalog.ids)}")
    spec = catalog.get(model)
    if address is None and find_weights(spec, [Path(d) for d in search_dirs]) is None:
        raise ModelFileMissing(f"model {model!r}: weights file {spec.weights.file} not found in "
                               f"{', '.join(search_dirs)}; run `bgremove models pull {model}`")
    if bg_color:
        Background(type="color", color=bg_color)  # a bad colour fails here, not in every actor
    in_fs, in_root, inputs = batch.list_images(in_url)
    in_url = in_fs.unstrip_protocol(in_root)  # the folder (when `in_url` named one image)
    out_fs, out_root = url_to_fs(out_url)
    batch.check_folders(in_fs, in_root, out_fs, out_root)
    outputs = batch.output_names(inputs, output_format)
    todo = batch.pending(outputs, batch.read_manifest(out_fs, out_root), out_fs, out_root,
                         model=model)
    counts = {"ok": 0, "failed": 0}
    ray_start_s = 0.0
    if todo:
        # Ray's notices (its cluster token, Ray Data's own progress and timing lines) are not
        # this command's output: its progress bar and summary are.
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # read when Ray Data configures
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
        if not ray.is_initialized():
            t0 = time.perf_counter()
            local = {"include_dashboard": False} if address is None else {}
            ray.init(address=address, log_to_driver=False, logging_level="WARNING", **local)
            ray_start_s = time.perf_counter() - t0
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the CLI shows its own, per image
        ctx.print_on_execution_start = False
        blocks = max(1, -(-len(todo) // batch_size))
        items = ray.data.from_items([{"input": rel, "output": outputs[rel]} for rel in todo],
                                    override_num_blocks=blocks)
        with warnings.catch_warnings():
            # Ray 2.60 documents `max_restarts=0` as the way to turn restarts off and also
            # warns that extra remote arguments are deprecated; the setting is what counts.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            rows = items.map_batches(
                CutoutWorker, batch_size=batch_size,
                compute=ray.data.ActorPoolStrategy(size=min(workers, blocks)),
                # A worker that dies fails the run instead of restarting from constructor
                # arguments Ray may have dropped; the manifest makes a rerun resume.
                max_restarts=0,
                num_cpus=threads_per_worker if not gpus_per_worker else 1,
                num_gpus=gpus_per_worker,
                fn_constructor_kwargs=dict(
                    model=model, catalog_path=str(catalog_path), search_dirs=search_dirs,
                    threads=threads_per_worker, gpu=gpus_per_worker > 0, in_url=in_url,
                    out_url=out_url, max_pixels=max_pixels, output_format=output_format,
                    bg_color=bg_color))
        manifest = batch.ManifestWriter(out_fs, out_root)
        try:
            for table in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
                finished = table.to_pylist()
                manifest.write(finished)
                for row in finished:
                    counts[row["status"]] += 1
                    if on_row is not None:
                        on_row(row)
        finally:
            manifest.close()
    return Summary(listed=len(inputs), skipped=len(inputs) - len(todo), ok=counts["ok"],
                   failed=counts["failed"], seconds=time.perf_counter() - started,
                   ray_start_s=ray_start_s)

