"""Overload on loopback: a burst of 10x the service's capacity, and what comes back.

    .venv/bin/python bench/bench_load.py                 # writes the section in docs/benchmarks.md
    .venv/bin/python bench/bench_load.py --burst-s 5 --out /tmp/load.md   # smoke run

Starts `serve run bench/bench_load.yaml` (u2netp, local.yaml's light pool, API keys ON, a small
per-replica in-flight limit so overload shows on 2 cores), creates two keys in its database:
"bulk" (no practical rate limit) and "limited" (the default 60 requests/min). Then:
1. capacity: `--clients` closed-loop clients on `POST /image/matte/v1` (a 512x512 photo) for
   `--capacity-s` seconds -> requests/s the service sustains;
2. burst: open loop at `--factor` (10) x that rate for `--burst-s` seconds, nine requests in ten
   from "bulk" and one in ten from "limited"; every answer's status and time is recorded, the
   server's memory (RSS of all its processes) sampled every 0.25 s;
3. after: `--after` sequential requests, which must all succeed at about the capacity phase's
   latency.
Pass criteria printed and written: every request answered (no transport errors or timeouts),
statuses only 200/429/503, no 5xx other than 503, 429/503 carry Retry-After, memory peak
bounded, normal service afterwards. Not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_matte import REPO, OursServer, wait_for_quiet  # noqa: E402
from docs_section import write_section  # noqa: E402
from media import photo  # noqa: E402

SERVE_YAML = REPO / "bench" / "bench_load.yaml"
DOC_BEGIN, DOC_END = "<!-- bench_load:start -->", "<!-- bench_load:end -->"
DOC_HEAD = """## Overload and backpressure (issue 6)

What is measured: `bench/bench_load.py` on `bench/bench_load.yaml` (u2netp, `configs/local.yaml`'s
light pool, API keys on, `BGR_MAX_INFLIGHT_REQUESTS=8` per ingress replica). Capacity = requests/s
that closed-loop clients get from `POST /image/matte/v1` (a 512x512 photo); then an open-loop burst
at 10x that rate (9 in 10 requests from a key without a practical rate limit, 1 in 10 from a key
with the default 60/min), then sequential requests to check the service is back to normal.
Memory = RSS of all the server's processes (Ray included), sampled every 0.25 s.
"""


class LoadServer(OursServer):
    """bench_matte's `serve run` launcher with keys on and a throw-away data dir."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(args, workdir)
        self.url = f"{self.base}/image/matte/v1"

    def command(self):
        cmd, env = super().command()
        env.update(BGR_AUTH_ENABLED="true", BGR_DATA_DIR=str(self.workdir / "data"),
                   BGR_MAX_INFLIGHT_REQUESTS=str(self.args.inflight))
        return cmd, env

    def rss(self) -> int:
        total = 0
        for p in self.procs.refresh():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total


class MemorySampler:
    def __init__(self, server: LoadServer) -> None:
        self.server, self.samples = server, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.samples.append(self.server.rss())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


async def one(client: httpx.AsyncClient, url: str, key: str, image: bytes) -> dict:
    started = time.perf_counter()
    try:
        r = await client.post(url, files={"image": ("p.png", image, "image/png")},
                              headers={"X-Api-Key": key})
        return {"status": r.status_code, "s": time.perf_counter() - started,
                "retry_after": r.headers.get("retry-after"), "key": key}
    except httpx.HTTPError as exc:
        return {"status": type(exc).__name__, "s": time.perf_counter() - started, "key": key}


async def capacity(url: str, key: str, image: bytes, clients: int, seconds: float) -> dict:
    done, lat = 0, []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60) as client:
        async def loop():
            nonlocal done
            while time.monotonic() < deadline:
                r = await one(client, url, key, image)
                if r["status"] != 200:
                    raise RuntimeError(f"capacity phase got {r['status']}")
                done += 1
                lat.append(r["s"])
        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.monotonic() - started
    return {"rps": done / elapsed, "requests": done, "p50_s": pct(lat, 0.5),
            "p95_s": pct(lat, 0.95)}


async def burst(url: str, keys: tuple[str, str], image: bytes, rate: float, seconds: float,
                timeout: float) -> list[dict]:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        tasks, n = [], int(rate * seconds)
        started = time.monotonic()
        for i in range(n):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            key = keys[1] if i % 10 == 9 else keys[0]
            tasks.append(asyncio.create_task(one(client, url, key, image)))
        return await asyncio.gather(*tasks)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--image", type=Path, default=photo("astronaut.png"))
    p.add_argument("--models-dir", type=Path,
                   default=Path(os.environ.get("BGR_MODELS_DIR", "~/.cache/bgremove/models")))
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--capacity-s", type=float, default=20.0)
    p.add_argument("--factor", type=float, default=10.0)
    p.add_argument("--burst-s", type=float, default=20.0)
    p.add_argument("--after", type=int, default=10)
    p.add_argument("--inflight", type=int, default=8, help="BGR_MAX_INFLIGHT_REQUESTS")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request client timeout, s")
    p.add_argument("--serve-config", type=Path, default=SERVE_YAML)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--allow-running-ray", action="store_true")
    p.add_argument("--wait-quiet", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.models_dir = args.models_dir.expanduser()
    if not wait_for_quiet(args):
        return 2
    import io

    from PIL import Image
    with Image.open(args.image) as im:
        buf = io.BytesIO()
        im.convert("RGB").resize((512, 512)).save(buf, "PNG")
    image = buf.getvalue()

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        workdir = Path(tmp)
        server = LoadServer(args, workdir)
        from serve_app.core.keys import KeyStore
        keys_db = KeyStore(f"sqlite:///{workdir / 'data' / 'bgremove.db'}")
        bulk = keys_db.create("bulk", credits=1e9, rate_limit_per_min=10**6,
                              max_concurrent_jobs=100)[1]
        limited = keys_db.create("limited", credits=1e9)[1]  # default 60/min
        startup = server.start()
        print(f"server up in {startup:.0f} s", flush=True)
        try:
            baseline_rss = server.rss()
            cap = asyncio.run(capacity(server.url, bulk, image, args.clients, args.capacity_s))
            print(f"capacity: {cap['rps']:.2f} req/s (p50 {cap['p50_s']*1e3:.0f} ms)", flush=True)
            rate = cap["rps"] * args.factor
            with MemorySampler(server) as mem:
                t0 = time.monotonic()
                results = asyncio.run(burst(server.url, (bulk, limited), image, rate,
                                            args.burst_s, args.timeout))
                burst_wall = time.monotonic() - t0
            after_lat, after_status = [], []
            with httpx.Client(timeout=60) as c:
                for _ in range(args.after):
                    t = time.perf_counter()
                    r = c.post(server.url, files={"image": ("p.png", image, "image/png")},
                               headers={"X-Api-Key": bulk})
                    after_lat.append(time.perf_counter() - t)
                    after_status.append(r.status_code)
            after_rss = server.rss()
        finally:
            server.stop()

    statuses = collections.Counter(str(r["status"]) for r in results)
    by_key = {name: collections.Counter(str(r["status"]) for r in results if r["key"] == k)
              for name, k in (("bulk", bulk), ("limited", limited))}
    refused = [r for r in results if r["status"] in (429, 503)]
    lat = {s: [r["s"] for r in results if str(r["status"]) == s] for s in statuses}
    checks = {
        "every request answered (no transport errors/timeouts)":
            all(isinstance(r["status"], int) for r in results),
        "only 200, 429, 503": set(statuses) <= {"200", "429", "503"},
        "429/503 carry Retry-After": all(r.get("retry_after") for r in refused),
        "served normally afterwards": all(s == 200 for s in after_status)
            and pct(after_lat, 0.5) < 3 * cap["p50_s"] + 0.5,
    }
    peak = max(mem.samples or [0])
    lines = [
        f"- {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores; "
        f"`BGR_MAX_INFLIGHT_REQUESTS={args.inflight}`; image 512x512 PNG ({len(image)//1024} KiB).",
        f"- Capacity ({args.clients} closed-loop clients, {args.capacity_s:.0f} s): "
        f"**{cap['rps']:.2f} req/s**, p50 {cap['p50_s']*1e3:.0f} ms, p95 {cap['p95_s']*1e3:.0f} ms.",
        f"- Burst: {len(results)} requests at {rate:.1f} req/s ({args.factor:.0f}x) for "
        f"{args.burst_s:.0f} s; all answered after {burst_wall:.1f} s.",
        "",
        "| status | requests | bulk key | limited key | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    for s in sorted(statuses):
        lines.append(f"| {s} | {statuses[s]} | {by_key['bulk'][s]} | {by_key['limited'][s]} "
                     f"| {pct(lat[s], 0.5)*1e3:.0f} | {pct(lat[s], 0.95)*1e3:.0f} |")
    lines += [
        "",
        f"- Server memory (RSS, all processes): {baseline_rss/2**20:.0f} MiB before, peak "
        f"{peak/2**20:.0f} MiB during the burst, {after_rss/2**20:.0f} MiB after.",
        f"- After the burst: {args.after} sequential requests, statuses "
        f"{dict(collections.Counter(after_status))}, p50 {pct(after_lat, 0.5)*1e3:.0f} ms.",
        "",
        *[f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks.items()],
        "",
        "```sh",
        ".venv/bin/python bench/bench_load.py --out docs/benchmarks.md",
        "```",
    ]
    text = "\n".join(lines)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"capacity": cap, "statuses": statuses,
                                         "by_key": by_key, "peak_rss": peak,
                                         "after": after_status, "checks": checks}, indent=1))
    if args.out:
        write_section(args.out, DOC_BEGIN, DOC_END, DOC_HEAD,
                      f"{DOC_BEGIN}\n<!-- Generated by bench/bench_load.py; everything between "
                      f"these markers is rewritten on each run. -->\n\n{text}\n{DOC_END}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
