"""The one-machine footprint of `bgremove serve CONFIG` with and without Ray's dashboard
(issue 18, item 2): idle memory (sum of RSS and of PSS over every process of the service) and
the number of processes, once /health answers and the service has idled --idle-s seconds.

    .venv/bin/python bench/bench_footprint.py                      # configs/local.yaml
    .venv/bin/python bench/bench_footprint.py --out docs/benchmarks.md

Each mode starts the service, checks that it serves (one /image/matte/v1 cut-out with the
default model, and Prometheus text from the node's metrics agent), measures, and stops it.
Not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import io
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from docs_section import write_section  # noqa: E402

BIN = Path(sys.executable).parent
DOC_BEGIN, DOC_END = "<!-- bench_footprint:start -->", "<!-- bench_footprint:end -->"
DOC_HEAD = """## One-machine footprint (issue 18)

`bgremove serve` (so `make run`) starts its local Ray without the dashboard unless
`--dashboard` is given (`serve_app/serve_run.py`). Given up without it: Ray's web UI on :8265,
the REST API behind `serve status` / `serve deploy` and the Ray Jobs API. Metrics (the node's
agent), logs, /health and every route stay. Measured after start-up and an idle spell:

"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def family(proc: psutil.Process) -> str:
    """A process's role: Ray sets its workers' titles (ray::ServeReplica:app:deployment)."""
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return "?"
    if "ServeReplica:" in cmd:  # ray::ServeReplica:<app>:<deployment>
        return cmd.split("ServeReplica:", 1)[1].split()[0].split(":")[-1]
    for key in ("ProxyActor", "ServeController"):
        if key in cmd:
            return f"ray::{key}"
    for key in ("gcs_server", "raylet", "dashboard/agent", "runtime_env/agent", "dashboard.py",
                "ray-dashboard", "log_monitor", "monitor.py", "serve_run", "bgremove",
                "ray::IDLE"):
        if key in cmd:
            return key
    return proc.name()


def measure(config: str, dashboard: bool, idle_s: float) -> dict:
    metrics_port = free_port()
    env = {**os.environ, "BGR_METRICS_PORT": str(metrics_port)}
    cmd = [str(BIN / "bgremove"), "serve", config, *(["--dashboard"] if dashboard else [])]
    started = time.monotonic()
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url="http://127.0.0.1:8000", timeout=60) as client:
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - started > 600 or launcher.poll() is not None:
                    raise SystemExit(f"service did not come up ({cmd})")
                time.sleep(1)
            up_s = time.monotonic() - started
            from PIL import Image
            from skimage import data

            buf = io.BytesIO()
            Image.fromarray(data.coffee()).save(buf, "PNG")
            cut = client.post("/image/matte/v1", files={"image": ("c.png", buf.getvalue())})
            assert cut.status_code == 200, cut.text
            time.sleep(idle_s)
            metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            dashboard_up = _answers("http://127.0.0.1:8265/")
        procs = [launcher_proc := psutil.Process(launcher.pid),
                 *launcher_proc.children(recursive=True)]
        rss = pss = 0
        roles: collections.Counter[str] = collections.Counter()
        role_pss: collections.Counter[str] = collections.Counter()
        for p in procs:
            try:
                info = p.memory_full_info()
            except psutil.Error:
                continue
            rss, pss = rss + info.rss, pss + info.pss
            roles[family(p)] += 1
            role_pss[family(p)] += info.pss
        return {"dashboard": dashboard, "up_s": up_s, "rss_mib": rss / 2**20,
                "pss_mib": pss / 2**20, "processes": sum(roles.values()), "roles": roles,
                "role_pss": role_pss,
                "metrics": "ray_serve_" in metrics, "dashboard_up": dashboard_up}
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(60)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/local.yaml")
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = [measure(args.config, dashboard, args.idle_s) for dashboard in (True, False)]
    rows = []
    for r in runs:
        roles = ", ".join(f"{k}{f' x{n}' if n > 1 else ''} {r['role_pss'][k] / 2**20:.0f}"
                          for k, n in sorted(r["roles"].items(),
                                             key=lambda kv: -r["role_pss"][kv[0]]))
        rows.append(f"| {'with' if r['dashboard'] else '**without** (default)'} | "
                    f"{r['rss_mib']:.0f} | {r['pss_mib']:.0f} | {r['processes']} | "
                    f"{r['up_s']:.0f} | {'yes' if r['metrics'] else 'NO'} | "
                    f"{'yes' if r['dashboard_up'] else 'no'} | {roles} |")
    before, after = runs
    machine = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    table = "\n".join([
        f"_{dt.date.today()}, {machine}; `{args.config}`, idle {args.idle_s:g} s after one "
        "cut-out; `bench/bench_footprint.py`._", "",
        "| dashboard | idle RSS MiB | idle PSS MiB | processes | start s | metrics | :8265 | "
        "PSS MiB by process (largest first) |", "|---|---|---|---|---|---|---|---|", *rows, "",
        f"Without the dashboard: {before['rss_mib'] - after['rss_mib']:.0f} MiB less RSS, "
        f"{before['pss_mib'] - after['pss_mib']:.0f} MiB less PSS, "
        f"{before['processes'] - after['processes']} fewer processes."])
    print(table)
    if args.out:
        write_section(args.out, DOC_BEGIN, DOC_END, DOC_HEAD, f"{DOC_BEGIN}\n{table}\n{DOC_END}")


if __name__ == "__main__":
    main()
