"""Does a model replica's memory keep growing under steady traffic? (issue 31, memory flat)

    .venv/bin/python bench/bench_replica_memory.py --model isnet-imgly-medium --calls 150
    .venv/bin/python bench/bench_replica_memory.py --out docs/benchmarks.md

What a segmentation replica does, without Ray: one `OnnxSegmenter` (the config's pro-pool
settings), called from fresh worker threads (as `asyncio.to_thread` does) with photos of many
sizes, 2 at a time. Each variant runs in its own process, because glibc reads its malloc
settings at start-up: `default` (glibc as is: up to 8 arenas per core, one per thread that
allocates), `arena_max_2` (`MALLOC_ARENA_MAX=2`, what `bgremove serve` sets), and `no_ort_arena`
(onnxruntime's own CPU arena off). RSS is sampled after every call; the table gives it after the
warm-up (first 10 %), at the middle and at the end, and the growth from warm-up to the end.
Not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

VARIANTS = {"default": {}, "arena_max_2": {"MALLOC_ARENA_MAX": "2"},
            "no_ort_arena": {"MALLOC_ARENA_MAX": "2", "BENCH_NO_ORT_ARENA": "1"}}
DOC_BEGIN, DOC_END = "<!-- bench_replica_memory:start -->", "<!-- bench_replica_memory:end -->"


def child(model: str, calls: int) -> None:
    """One variant: print a JSON list of RSS samples (MiB), one per call."""
    import numpy as np
    import psutil
    from PIL import Image

    from pipelines.catalog import load_catalog
    from pipelines.segmenter import OnnxSegmenter
    from pipelines.weights import find_weights
    from serve_app.core.settings import get_settings

    from media import PHOTOS, photo

    spec = next(m for m in load_catalog().models if m.id == model)
    weights = find_weights(spec, get_settings().model_search_dirs())
    seg = OnnxSegmenter(spec, weights, memory_arena=not os.environ.get("BENCH_NO_ORT_ARENA"))
    rng = np.random.default_rng(0)
    base = [np.asarray(Image.open(photo(p)).convert("RGB")) for p in PHOTOS]
    proc, samples, lock = psutil.Process(), [], threading.Lock()

    def one(i: int) -> None:
        src = base[i % len(base)]
        w, h = int(rng.integers(320, 2400)), int(rng.integers(320, 2400))
        img = np.asarray(Image.fromarray(src).resize((w, h)))
        seg.predict_batch([img])
        with lock:
            samples.append(proc.memory_info().rss / 2**20)

    for start in range(0, calls, 2):  # two calls at once, each on a new thread
        threads = [threading.Thread(target=one, args=(i,)) for i in range(start, start + 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(json.dumps(samples))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="isnet-imgly-medium")
    ap.add_argument("--calls", type=int, default=150)
    ap.add_argument("--out")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args.model, args.calls)
        return
    rows = []
    for name, env in VARIANTS.items():
        run_env = {k: v for k, v in os.environ.items()
                   if k not in ("MALLOC_ARENA_MAX", "BENCH_NO_ORT_ARENA")}
        out = subprocess.run([sys.executable, __file__, "--child", "--model", args.model,
                              "--calls", str(args.calls)], env={**run_env, **env},
                             capture_output=True, text=True, check=True)
        s = json.loads(out.stdout.strip().splitlines()[-1])
        warm, mid, end = s[len(s) // 10], s[len(s) // 2], s[-1]
        rows.append((name, warm, mid, end, max(s), (end - warm) / warm * 100))
        print(f"{name}: {warm:.0f} -> {mid:.0f} -> {end:.0f} MiB (peak {max(s):.0f})",
              file=sys.stderr)
    head = (f"## Replica memory under steady traffic (issue 31)\n\n"
            f"`bench/bench_replica_memory.py --model {args.model} --calls {args.calls}`, "
            f"{dt.date.today()}, 2 cores: RSS of one process running what a replica runs, "
            "photos of random sizes (320-2400 px a side), 2 calls at once on fresh threads.\n\n"
            "| variant | RSS after warm-up (MiB) | middle | end | peak | growth warm-up -> end |\n"
            "|---|---|---|---|---|---|\n")
    table = head + "".join(f"| {n} | {w:.0f} | {m:.0f} | {e:.0f} | {p:.0f} | {g:+.1f} % |\n"
                           for n, w, m, e, p, g in rows)
    print(table)
    if args.out:
        from docs_section import write_section
        write_section(Path(args.out), DOC_BEGIN, DOC_END, "",
                      f"{DOC_BEGIN}\n{table}{DOC_END}")


if __name__ == "__main__":
    main()
