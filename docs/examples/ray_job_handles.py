"""A Ray job that sends a folder of images to the running bgremove app through its handles.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python docs/examples/ray_job_handles.py /data/in /data/out --effect blur

It runs as one more driver on the cluster that serves the app: the images go straight to the
app's pools (their replicas, batching and GPUs, shared with live traffic) without HTTP. Handles
are for trusted code on the cluster: no API key, rate limit or credit applies to them.
Errors arrive as the project's exceptions (`pipelines.errors`), one per image.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path

import ray
from ray import serve

from pipelines.errors import ServiceError
from serve_app.schemas import ImageJob

SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Cut out a folder through the app's handle.")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--app", default="bgremove", help="Serve application name")
    p.add_argument("--effect", default="matte")
    p.add_argument("--model", help="default: the app's default model")
    p.add_argument("--in-flight", type=int, default=16, help="requests outstanding at once")
    args = p.parse_args(argv)

    ray.init()  # inside `ray job submit`, RAY_ADDRESS points at the cluster
    app = serve.get_app_handle(args.app)
    files = sorted(f for f in args.src.rglob("*") if f.suffix.lower() in SUFFIXES)
    args.dst.mkdir(parents=True, exist_ok=True)
    options = {"model": args.model} if args.model else {}
    window: deque = deque()
    failed = 0

    def finish() -> None:
        nonlocal failed
        path, response = window.popleft()
        try:
            result = response.result(timeout_s=600)
        except ServiceError as exc:
            print(f"{path}: {exc.message}", file=sys.stderr)
            failed += 1
            return
        (args.dst / f"{path.stem}.png").write_bytes(result.png)
        print(f"{path}: {result.width}x{result.height} {result.model} "
              f"{sum(result.timings_ms.values()):.0f} ms")

    for path in files:  # keep --in-flight requests outstanding: the pools batch them
        job = ImageJob(image=path.read_bytes(), effect=args.effect, options=options)
        window.append((path, app.process.remote(job)))
        if len(window) >= args.in_flight:
            finish()
    while window:
        finish()
    print(f"{len(files) - failed} of {len(files)} images done")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
