"""Mixed traffic for a while against the default config: which process's memory grows? (issue 31)

    .venv/bin/python bench/bench_soak.py --minutes 20
    .venv/bin/python bench/bench_soak.py --minutes 60 --out docs/benchmarks.md

Starts `configs/local.yaml` as `bgremove serve` does (keys off; its own data folder), then runs
`--clients` (2) closed-loop clients for `--minutes`, each request drawn in turn from: a default
(`auto`) matte of a photo of random size (400-2000 px a side), a shotgun over every model, an
HD job (submit, poll, download) and a 2 s 480p video job (submit, poll, download). Every
minute it samples the RSS of each of the service's processes, named by their Ray actor
(`ServeReplica:bgremove:<deployment>`, the proxy, the controller, ...). Reported: answers by
status, jobs done, and per process the RSS at minute 2 (after warm-up), at the middle and at the
end, with the growth from minute 2. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime as dt
import io
import random
import re
import sys
import time
from pathlib import Path

import httpx
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_matte import OursServer, add_service_args, local_service, wait_for_quiet  # noqa: E402
from docs_section import write_section  # noqa: E402
from media import PHOTOS, clip, photo  # noqa: E402

DOC_BEGIN, DOC_END = "<!-- bench_soak:start -->", "<!-- bench_soak:end -->"


def process_name(p: psutil.Process) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    # a replica's title is `ray::ServeReplica:<app>:<deployment>` (+ `.<method>` while busy)
    m = re.search(r"ray::(ServeReplica:[^ .]+|[A-Za-z_]+)", cmd)
    if m:
        return m.group(1)
    for key in ("gcs_server", "raylet", "serve_app.serve_run", "dashboard", "log_monitor",
                "monitor.py", "runtime_env"):
        if key in cmd:
            return key
    return p.name()


def sample(server: OursServer) -> dict[str, float]:
    """RSS (MiB) per process name (several processes of one name summed)."""
    out: dict[str, float] = collections.defaultdict(float)
    for p in server.procs.refresh():
        try:
            out[process_name(p)] += p.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return dict(out)


def photo_bytes(rng: random.Random, images: list[Image.Image]) -> bytes:
    img = rng.choice(images)
    w, h = rng.randint(400, 2000), rng.randint(400, 2000)
    buf = io.BytesIO()
    img.resize((w, h)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def poll(client: httpx.AsyncClient, url: str, limit_s: float = 600) -> int:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        r = await client.get(url)
        if r.status_code != 202:
            return r.status_code
        await asyncio.sleep(1.0)
    return 0


async def traffic(base: str, minutes: float, clients: int, on_minute) -> dict:
    rng = random.Random(7)
    images = [Image.open(photo(p)).convert("RGB") for p in PHOTOS]
    video = clip(2.0, 10, (854, 480), head_in_frame=True).read_bytes()
    counts: collections.Counter = collections.Counter()
    end = time.monotonic() + minutes * 60

    async def one(client: httpx.AsyncClient, kind: str) -> None:
        if kind == "matte":
            r = await client.post(f"{base}/image/matte/v1",
                                  files={"image": ("a.jpg", photo_bytes(rng, images))})
            counts[f"matte {r.status_code}"] += 1
        elif kind == "shotgun":
            data = base64.b64encode(photo_bytes(rng, images)).decode()
            r = await client.post(f"{base}/remove-background",
                                  json={"image": data, "include_models": ["all"]})
            counts[f"shotgun {r.status_code}"] += 1
        elif kind == "hd":
            r = await client.post(f"{base}/image/hd/submit/v1",
                                  files={"image": ("a.jpg", photo_bytes(rng, images))})
            counts[f"hd submit {r.status_code}"] += 1
            if r.status_code == 202:
                job = r.json()["uuid"]
                status = await poll(client, f"{base}/image/hd/result/{job}")
                counts[f"hd result {status}"] += 1
        else:
            r = await client.post(f"{base}/video/submit/v1",
                                  files={"video": ("a.mp4", video, "video/mp4")})
            counts[f"video submit {r.status_code}"] += 1
            if r.status_code == 202:
                job = r.json()["uuid"]
                status = await poll(client, f"{base}/video/result/{job}")
                counts[f"video result {status}"] += 1

    async def loop(i: int) -> None:
        kinds = ["matte", "matte", "shotgun", "hd", "matte", "video"]
        n = i
        async with httpx.AsyncClient(timeout=600) as client:
            while time.monotonic() < end:
                try:
                    await one(client, kinds[n % len(kinds)])
                except httpx.HTTPError as exc:
                    counts[f"transport {type(exc).__name__}"] += 1
                n += 1

    async def minutes_tick() -> None:
        minute = 0
        while time.monotonic() < end:
            await asyncio.sleep(60)
            minute += 1
            on_minute(minute)

    await asyncio.gather(*(loop(i) for i in range(clients)), minutes_tick())
    return dict(counts)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--out", type=Path)
    add_service_args(p)
    args = p.parse_args()
    if not wait_for_quiet(args):
        sys.exit(2)
    samples: dict[int, dict[str, float]] = {}
    with local_service(args, "bgr-soak-") as server:

        def on_minute(m: int) -> None:
            samples[m] = sample(server)
            total = sum(samples[m].values())
            print(f"minute {m}: {total:.0f} MiB over {len(samples[m])} names", flush=True)

        counts = asyncio.run(traffic(server.base, args.minutes, args.clients, on_minute))
    first, last = min(k for k in samples if k >= 2), max(samples)
    mid = sorted(samples)[len(samples) // 2]
    names = sorted(samples[last], key=lambda n: -samples[last][n])
    lines = [f"## Mixed traffic for {args.minutes:g} minutes: memory per process (issue 31)\n",
             f"`bench/bench_soak.py --minutes {args.minutes:g}`, "
             f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, 2 cores, `configs/local.yaml` "
             f"(keys off), {args.clients} closed-loop clients: default mattes of photos of "
             "random size, shotguns over every model, HD jobs, 2 s 480p video jobs.\n",
             "Answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + "\n",
             f"| process | RSS minute {first} (MiB) | minute {mid} | minute {last} | growth |",
             "|---|---|---|---|---|"]
    for n in names:
        a, b, c = samples[first].get(n, 0), samples[mid].get(n, 0), samples[last][n]
        if c < 50:
            continue
        lines.append(f"| {n} | {a:.0f} | {b:.0f} | {c:.0f} | {(c - a) / a * 100 if a else 0:+.1f} % |")
    ta, tc = sum(samples[first].values()), sum(samples[last].values())
    lines.append(f"| **all** | {ta:.0f} | {sum(samples[mid].values()):.0f} | {tc:.0f} | "
                 f"{(tc - ta) / ta * 100:+.1f} % |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        write_section(args.out, DOC_BEGIN, DOC_END, "", f"{DOC_BEGIN}\n{table}{DOC_END}")


if __name__ == "__main__":
    main()
