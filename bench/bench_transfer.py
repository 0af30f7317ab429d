"""What crosses Ray between the ingress (or the job worker) and a model replica, before and
after `pipelines.segmenter.for_model` (issue 18, item 1).

    .venv/bin/python bench/bench_transfer.py                # prints the table
    .venv/bin/python bench/bench_transfer.py --out docs/benchmarks.md

One real u2netp replica (`deployments.segmentation.SegmentationModel` under Ray Serve, local
Ray, 2 intra-op threads) and a caller in this process, as the ingress is. Per image size, median
of --runs calls:
  full     `handle.segment.remote(rgb)`: the full image in, the full-size mask back (before);
  for_model  the image resized here to the model's input, `native=True`, the mask enlarged here
           with `to_size` (after; the same pixels: tests/test_real_models.py).
Bytes are the arrays' sizes each way (what Ray serialises into its object store).
Not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from docs_section import write_section  # noqa: E402

MODELS_DIR = Path(os.environ.get("BGR_MODELS_DIR", "~/.cache/bgremove/models")).expanduser()
SIZES = [(512, 512), (2048, 2048), (4000, 3000), (8000, 6000)]
DOC_BEGIN, DOC_END = "<!-- bench_transfer:start -->", "<!-- bench_transfer:end -->"
DOC_HEAD = """## What crosses Ray to a model (issue 18)

The ingress and the job worker resize the image to the model's input once and send that; the
replica answers at the model's output size and the mask is enlarged where the cut-out is made
(`pipelines.segmenter.for_model` / `to_size`; the same pixels, tested). Measured with one real
u2netp replica and the caller in another process, as in the service:

"""


def photo(width: int, height: int) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import ray
    from ray import serve

    from deployments.segmentation import SegmentationModel
    from pipelines.catalog import load_catalog
    from pipelines.segmenter import for_model, to_size

    spec = load_catalog().get("u2netp")
    weights = MODELS_DIR / spec.weights.file
    if not weights.is_file():
        sys.exit(f"{weights} missing: run `bgremove models pull u2netp`")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    handle = serve.run(serve.deployment(SegmentationModel, name="u2netp").bind(
        spec.model_dump(mode="json"), str(weights), intra_op_threads=2), name="transfer",
        route_prefix=None)
    rows = []
    for width, height in SIZES:
        rgb = photo(width, height)

        def full() -> np.ndarray:
            return handle.segment.remote(rgb).result()[0]

        def shrunk() -> np.ndarray:
            sent, native = for_model(rgb, spec)
            mask = handle.segment.remote(sent, native).result()[0]
            return to_size(mask, spec, (width, height)) if native else mask

        times = {}
        for name, call in (("full", full), ("for_model", shrunk)):
            call()  # warm
            samples = []
            for _ in range(args.runs):
                started = time.perf_counter()
                call()
                samples.append(time.perf_counter() - started)
            times[name] = statistics.median(samples) * 1e3
        assert np.array_equal(full(), shrunk())
        sent, native = for_model(rgb, spec)
        before = rgb.nbytes + width * height
        after = sent.nbytes + (spec.preprocess.width * spec.preprocess.height if native
                               else width * height)
        rows.append(f"| {width}x{height} | {before / 1e6:.2f} | {after / 1e6:.2f} | "
                    f"{before / after:.0f}x | {times['full']:.0f} | {times['for_model']:.0f} | "
                    f"{times['full'] / times['for_model']:.2f}x |")
        print(rows[-1], flush=True)
    serve.shutdown()
    ray.shutdown()
    machine = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    table = "\n".join([
        f"_{dt.date.today()}, {machine}; u2netp, median of {args.runs} calls; "
        "`bench/bench_transfer.py`._", "",
        "| image | MB over Ray before | after | less | call ms before | after | faster |",
        "|---|---|---|---|---|---|---|", *rows])
    print(table)
    if args.out:
        write_section(args.out, DOC_BEGIN, DOC_END, DOC_HEAD,
                      f"{DOC_BEGIN}\n{table}\n{DOC_END}")


if __name__ == "__main__":
    main()
