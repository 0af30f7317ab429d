"""Threads per inference against replicas per pool, for the light pool on this machine.

    .venv/bin/python bench/bench_threads.py                       # table to stdout
    .venv/bin/python bench/bench_threads.py --out docs/benchmarks.md

Runs bench/bench_matte.py's harness (`bench_server`: the real service started by `serve run`,
warm-up, then each concurrency level of u2netp mattes, CPU of every process counted) once per
light-pool layout below, one after another on the same machine, and prints requests/s and p50
per level. The layouts differ only in `pools.light` of bench/bench_serve.yaml. u2netp runs its
verified int8 build when it is installed (`make int8`), as the service would. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_matte import (  # noqa: E402
    IMAGES,
    SERVE_YAML,
    OursServer,
    bench_server,
    machine,
    media_dir,
    u2netp_precision,
    wait_for_quiet,
)
from bench_matte import parse_args as matte_args  # noqa: E402
from docs_section import write_section  # noqa: E402

DOC_BEGIN, DOC_END = "<!-- bench_threads:start -->", "<!-- bench_threads:end -->"
BASE = {"ray_actor_options": {"num_cpus": 0.25}, "max_ongoing_requests": 64}
LAYOUTS = {
    "1 replica, 2 threads, 1 inference at a time": {"intra_op_threads": 2},
    "1 replica, 1 thread x 2 inferences at once": {"intra_op_threads": 1,
                                                   "concurrent_inferences": 2},
    "1 replica, 1 thread x 2 + 2 threads when alone (configs/local.yaml)": {
        "intra_op_threads": 1, "concurrent_inferences": 2, "solo_intra_op_threads": 2},
    "2 replicas, 1 thread each": {"intra_op_threads": 1, "num_replicas": 2},
    "2 replicas, 2 threads each": {"intra_op_threads": 2, "num_replicas": 2},
}


def layout_config(pool: dict, folder: Path) -> Path:
    config = yaml.safe_load(SERVE_YAML.read_text())
    config["applications"][0]["args"]["pools"]["light"] = {**BASE, **pool}
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="1,4")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--out", type=Path)
    ours = p.parse_args()
    args = matte_args(["--only", "ours", "--levels", ours.levels, "--requests",
                       str(ours.requests)])
    if not wait_for_quiet(args):
        return 1
    images = [(n, (media_dir() / n).read_bytes()) for n in IMAGES]
    rows = []
    for name, pool in LAYOUTS.items():
        with tempfile.TemporaryDirectory(prefix="bgr-threads-") as tmp:
            args.serve_config = layout_config(pool, Path(tmp))
            os.environ["BGR_DATA_DIR"] = tmp
            run = bench_server(OursServer(args, Path(tmp)), images, args)
        if run.failed:
            rows.append(f"| {name} | failed: {run.failed[:80]} |" + " |" * (2 * len(args.levels) - 1))
            continue
        cells = []
        for level in run.levels:
            d = level.as_dict()
            cells += [f"{d['rps']:.2f}", f"{d['p50_ms']:.0f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    head = "| light pool (u2netp) | " + " | ".join(
        f"c={c} req/s | c={c} p50 ms" for c in args.levels) + " |"
    rule = "|---|" + "---|" * (2 * len(args.levels))
    m = machine()
    section = (f"{DOC_BEGIN}\nMeasured {dt.date.today()} on {m['cpu']}; "
               f"`bench/bench_threads.py`: bench_matte's harness, {args.requests} mattes of "
               f"u2netp per level ({u2netp_precision(args.models_dir)}), one layout after "
               "another on the same machine.\n\n" + "\n".join([head, rule, *rows]) + "\n" + DOC_END)
    print(section)
    if ours.out:
        write_section(ours.out, DOC_BEGIN, DOC_END,
                      "## Threads per inference against replicas per pool", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
