"""50 concurrent default mattes against the default config: answered in time, or refused at once?

    .venv/bin/python bench/bench_overload.py                    # both modes, table to stdout
    .venv/bin/python bench/bench_overload.py --out docs/benchmarks.md

Starts `configs/local.yaml` as `bgremove serve` does (keys off), twice: once with admission off
(`BGR_MAX_QUEUE_WAIT_S=0`, how the service behaved before issue 32) and once with the default
(30 s). Each run warms the models with 3 sequential requests, then sends `--clients` (50)
`POST /image/matte/v1` with no `model` (so `auto`) at once, a 1024x1024 photo each, with a
client timeout of `--timeout` (120 s). Reported: answers by status, client timeouts, latency of
the 200s (p50/max), of the refusals, and the Retry-After values. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_matte import add_service_args, local_service, wait_for_quiet  # noqa: E402
from docs_section import write_section  # noqa: E402
from media import photo  # noqa: E402

DOC_BEGIN, DOC_END = "<!-- bench_overload:start -->", "<!-- bench_overload:end -->"


def image_1024() -> bytes:
    img = Image.open(photo("astronaut.png")).convert("RGB").resize((1024, 1024), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


async def burst(url: str, data: bytes, clients: int, timeout: float) -> list[dict]:
    async with httpx.AsyncClient(timeout=timeout) as client:
        async def one() -> dict:
            t = time.perf_counter()
            try:
                r = await client.post(url, files={"image": ("a.png", data, "image/png")})
                return {"status": r.status_code, "s": time.perf_counter() - t,
                        "retry_after": r.headers.get("retry-after")}
            except httpx.TimeoutException:
                return {"status": "timeout", "s": time.perf_counter() - t, "retry_after": None}
            except httpx.HTTPError as exc:
                return {"status": type(exc).__name__, "s": time.perf_counter() - t,
                        "retry_after": None}
        return await asyncio.gather(*(one() for _ in range(clients)))


def run_mode(args: argparse.Namespace, wait_s: str, data: bytes) -> dict:
    os.environ["BGR_MAX_QUEUE_WAIT_S"] = wait_s
    with local_service(args, "bgr-overload-") as server:
        with httpx.Client(timeout=args.timeout) as c:
            for _ in range(3):
                r = c.post(server.url, files={"image": ("a.png", data, "image/png")})
                r.raise_for_status()
        t0 = time.perf_counter()
        answers = asyncio.run(burst(server.url, data, args.clients, args.timeout))
        wall = time.perf_counter() - t0
    by_status: dict[str, int] = {}
    for a in answers:
        by_status[str(a["status"])] = by_status.get(str(a["status"]), 0) + 1
    ok = sorted(a["s"] for a in answers if a["status"] == 200)
    busy = sorted(a["s"] for a in answers if a["status"] == 503)
    retry = sorted(int(a["retry_after"]) for a in answers if a["retry_after"])
    return {"wait": wait_s, "by_status": by_status, "wall_s": wall,
            "ok_p50": statistics.median(ok) if ok else None, "ok_max": max(ok) if ok else None,
            "busy_max": max(busy) if busy else None,
            "retry": (retry[0], retry[-1]) if retry else None,
            "all_within_60": all(a["s"] <= 60 for a in answers if a["status"] in (200, 503))
            and all(a["status"] in (200, 503) for a in answers)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--modes", default="0,30", help="BGR_MAX_QUEUE_WAIT_S values (0: off)")
    p.add_argument("--out", type=Path)
    add_service_args(p)
    args = p.parse_args()
    if not wait_for_quiet(args):
        sys.exit(2)
    data = image_1024()
    rows = [run_mode(args, w, data) for w in args.modes.split(",")]
    lines = [f"## Overload: {args.clients} concurrent default mattes (issue 32)\n",
             f"`bench/bench_overload.py`, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, 2 cores, "
             f"`configs/local.yaml` (keys off), `POST /image/matte/v1` with no `model` on a "
             f"1024x1024 photo, {args.clients} at once after 3 warm-up requests, client "
             f"timeout {args.timeout:.0f} s.\n",
             "| `BGR_MAX_QUEUE_WAIT_S` | answers by status | 200s p50 / max (s) | 503s max (s) "
             "| Retry-After (s) | burst wall (s) | all answered <= 60 s with 200/503 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        st = ", ".join(f"{k}: {v}" for k, v in sorted(r["by_status"].items()))
        ok = (f"{r['ok_p50']:.1f} / {r['ok_max']:.1f}" if r["ok_p50"] is not None else "-")
        busy = f"{r['busy_max']:.2f}" if r["busy_max"] is not None else "-"
        retry = f"{r['retry'][0]}-{r['retry'][1]}" if r["retry"] else "-"
        lines.append(f"| {r['wait']}{' (off)' if r['wait'] == '0' else ''} | {st} | {ok} | "
                     f"{busy} | {retry} | {r['wall_s']:.1f} | "
                     f"{'yes' if r['all_within_60'] else 'no'} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        write_section(args.out, DOC_BEGIN, DOC_END, "", f"{DOC_BEGIN}\n{table}{DOC_END}")


if __name__ == "__main__":
    main()
