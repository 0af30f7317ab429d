"""What the default `auto` costs per photo, person and object photos apart (issue 32, item 3).

    .venv/bin/python bench/bench_auto_cost.py
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/bench_auto_cost.py   # a baseline

Starts `configs/local.yaml` as `bgremove serve` does (keys off), warms it with 2 requests per
photo, then sends each photo `--repeat` (8) times one after another as `POST /image/matte/v1`
with no `model`, a 1024x1024 copy each. Per photo: the model `auto` kept (`X-Model`), the
subject (`X-Type`), the median latency, and the CPU seconds the service's processes spent per
request (their summed user+system time across the run / requests). Not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_matte import OursServer, add_service_args, local_service, wait_for_quiet  # noqa: E402
from media import photo  # noqa: E402

PHOTOS = {"astronaut.png": "a person (face in frame)", "coffee.png": "an object",
          "chelsea.png": "an animal"}


def cpu_seconds(server: OursServer) -> float:
    total = 0.0
    for p in server.procs.refresh():
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=8)
    p.add_argument("--json", type=Path)
    add_service_args(p)
    args = p.parse_args()
    if not wait_for_quiet(args):
        sys.exit(2)
    images = {}
    for name in PHOTOS:
        buf = io.BytesIO()
        Image.open(photo(name)).convert("RGB").resize((1024, 1024), Image.LANCZOS).save(buf, "PNG")
        images[name] = buf.getvalue()
    rows = []
    with local_service(args, "bgr-autocost-") as server, httpx.Client(timeout=300) as client:
        def matte(data: bytes) -> httpx.Response:
            r = client.post(server.url, files={"image": ("a.png", data, "image/png")})
            r.raise_for_status()
            return r
        for data in images.values():
            matte(data)
            matte(data)
        time.sleep(3)
        for name, data in images.items():
            cpu0, times, kept = cpu_seconds(server), [], set()
            for _ in range(args.repeat):
                t = time.perf_counter()
                r = matte(data)
                times.append(time.perf_counter() - t)
                kept.add((r.headers.get("x-model"), r.headers.get("x-type")))
            cpu = (cpu_seconds(server) - cpu0) / args.repeat
            rows.append({"photo": name, "what": PHOTOS[name], "kept": sorted(kept),
                         "p50_s": statistics.median(times), "cpu_s": cpu})
    print("| photo | kept (model, subject) | p50 latency (s) | CPU s per request |")
    print("|---|---|---|---|")
    for r in rows:
        kept = "; ".join(f"{m}, {t}" for m, t in r["kept"])
        print(f"| {r['photo']} ({r['what']}) | {kept} | {r['p50_s']:.2f} | {r['cpu_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
