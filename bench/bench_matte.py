"""Benchmark `POST /image/matte/v1` (our Ray Serve app) against rembg's server, one run.

    .venv/bin/python bench/bench_matte.py                     # both, levels 1,4,16, writes docs
    .venv/bin/python bench/bench_matte.py --only ours --requests 30 --levels 4

Each server is started as a subprocess, warmed up, loaded at each concurrency level with a
fixed number of requests (httpx, 127.0.0.1 only), then stopped; the two never run at the same
time. Per level: requests/s, p50/p95 latency, errors, peak memory (sum of RSS over the server's
processes, sampled every 0.2 s) and server CPU seconds per request. The markdown table goes to
stdout and, when both servers ran (or --out is given), into docs/benchmarks.md.

Servers:
  ours   `serve run bench/bench_serve.yaml` (u2netp only) as `bgremove serve` runs it (no Ray
         dashboard: `python -m serve_app.serve_run`), request `image` + `model=u2netp`
  rembg  bench/rembg_server.py: rembg.remove(..., session=new_session("u2netp")) in a thread,
         as `rembg s` does; request `file` + `model=u2netp`
Both use the same u2netp.onnx (md5 8e83ca70..., rembg's release file), fetched with
`bgremove models pull u2netp` into --models-dir when absent.

Not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from media import PHOTOS, media_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
IMAGES = PHOTOS
SERVE_YAML = REPO / "bench" / "bench_serve.yaml"
MODEL = "u2netp"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DOC_BEGIN = "<!-- bench_matte:begin -->"
DOC_END = "<!-- bench_matte:end -->"


# ---------------------------------------------------------------------------------------------
# results
@dataclass
class Level:
    concurrency: int
    requests: int
    ok: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # X-Processing-Time-Ms, ours only
    cpu_by_process: dict[str, float] = field(default_factory=dict)  # CPU s during the level
    peak_rss: int = 0
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # this process (the load generator)
    other_cpu_s: float = 0.0  # every other process on the machine: interference
    error_samples: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float, values: list[float] | None = None) -> float:
        v = sorted(self.latencies_s if values is None else values)
        if not v:
            return float("nan")
        pos = (len(v) - 1) * q
        lo = int(pos)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    def as_dict(self) -> dict:
        return {
            "concurrency": self.concurrency, "requests": self.requests, "ok": self.ok,
            "errors": self.errors, "wall_s": round(self.wall_s, 3), "rps": round(self.rps, 3),
            "p50_ms": round(self.pct(0.5) * 1e3, 1), "p95_ms": round(self.pct(0.95) * 1e3, 1),
            "server_p50_ms": round(self.pct(0.5, self.server_ms), 1) if self.server_ms else None,
            "peak_rss_mib": round(self.peak_rss / 2**20, 1),
            "cpu_s_per_req": round(self.cpu_s / self.ok, 3) if self.ok else None,
            "server_cpu_s": round(self.cpu_s, 2), "client_cpu_s": round(self.client_cpu_s, 2),
            "other_cpu_s": round(self.other_cpu_s, 2),
            "cpu_s_per_req_by_process": {
                k: round(v / self.ok, 4) for k, v in sorted(
                    self.cpu_by_process.items(), key=lambda kv: -kv[1]) if self.ok and v > 0},
            "error_samples": self.error_samples[:3],
        }


@dataclass
class ServerRun:
    name: str
    label: str
    levels: list[Level] = field(default_factory=list)
    idle_rss: int = 0
    idle_pss: int = 0
    processes: int = 0
    startup_s: float = 0.0
    loadavg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    failed: str | None = None


# ---------------------------------------------------------------------------------------------
# process-tree memory / CPU sampling
class ProcessSet:
    """The server's processes: the launcher's process tree (for Ray: GCS, raylet and the
    workers under it, dashboard, ...), plus, for Ray, any process whose command line names this
    cluster's session directory (in case one was re-parented). Another user's Ray cluster on the
    same machine is not counted."""

    def __init__(self, root_pid: int, include_ray: bool) -> None:
        self.root = psutil.Process(root_pid)
        self.include_ray = include_ray
        self.session: str | None = None
        self._procs: dict[int, psutil.Process] = {}
        self.seen: dict[int, psutil.Process] = {}  # every process ever counted, for clean-up

    def _session_dir(self, procs: list[psutil.Process]) -> str | None:
        for p in procs:
            try:
                m = re.search(r"/session_\d{4}-\d\d-\d\d_[\d_-]+", " ".join(p.cmdline()))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if m:
                return m.group(0)
        return None

    def refresh(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        try:
            for p in [self.root, *self.root.children(recursive=True)]:
                found[p.pid] = p
        except psutil.NoSuchProcess:
            pass
        if self.include_ray:
            self.session = self.session or self._session_dir(list(found.values()))
            if self.session:
                for p in psutil.process_iter(["cmdline"]):
                    try:
                        if p.pid not in found and self.session in " ".join(p.info["cmdline"] or ()):
                            found[p.pid] = p
                    except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
                        continue
        for pid, p in found.items():
            self._procs.setdefault(pid, p)
            self.seen.setdefault(pid, p)
        for pid in list(self._procs):
            if pid not in found:
                del self._procs[pid]
        return list(self._procs.values())

    def kill_leftovers(self) -> list[int]:
        """SIGKILL every process of this server still alive (psutil checks the pid was not reused)."""
        killed = []
        for p in self.seen.values():
            try:
                if p.is_running():
                    p.kill()
                    killed.append(p.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return killed

    def rss(self) -> int:
        total = 0
        for p in self.refresh():
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def pss(self) -> int:
        total = 0
        for p in self.refresh():
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
                pass
        return total

    def labels(self) -> dict[int, str]:
        out = {}
        for p in self.refresh():
            try:
                out[p.pid] = process_label(p.cmdline(), p.pid == self.root.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def cpu_seconds(self) -> dict[int, float]:
        out = {}
        for p in self.refresh():
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def describe(self) -> list[str]:
        rows = []
        for p in self.refresh():
            try:
                rows.append(f"{p.pid:>7} {p.memory_info().rss / 2**20:8.1f} MiB  "
                            f"{' '.join(p.cmdline())[:110]}")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return rows


def process_label(cmdline: list[str], is_root: bool) -> str:
    """Short name for a server process: 'ray::ServeReplica:bgremove:u2netp', 'raylet', ..."""
    if is_root:
        return "launcher (serve run / uvicorn)"
    cmd = " ".join(cmdline)
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]
    m = re.match(r"(ray-dashboard-\w+?)-\d", cmd)
    if m:
        return "dashboard heads (ray-dashboard-*)"
    for part in cmdline[:3]:
        base = os.path.basename(part)
        if base in ("gcs_server", "raylet") or base.endswith(".py"):
            return base
    return os.path.basename(cmdline[0]) if cmdline else "?"


class PeakSampler:
    def __init__(self, procs: ProcessSet, interval: float = 0.2) -> None:
        self.procs, self.interval = procs, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.procs.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.procs.rss())


def busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + \
        getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


def own_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def other_cpu(procs: ProcessSet, seconds: float = 1.0) -> float:
    """CPU seconds that processes other than the server and this one use over `seconds`."""
    before, busy0, own0 = procs.cpu_seconds(), busy_seconds(), own_cpu()
    time.sleep(seconds)
    server = cpu_delta(before, procs.cpu_seconds())
    return max(0.0, busy_seconds() - busy0 - server - (own_cpu() - own0))


def wait_cpu_quiet(procs: ProcessSet, limit_s: float, threshold: float = 0.1) -> None:
    """Wait (up to limit_s) until other processes use under `threshold` of a core for 2 s."""
    deadline = time.monotonic() + limit_s
    told = False
    while True:
        used = other_cpu(procs, 2.0) / 2.0
        if used < threshold or time.monotonic() >= deadline:
            if used >= threshold:
                print(f"   machine still busy ({used:.0%} of a core used by other processes); "
                      "measuring anyway", flush=True)
            return
        if not told:
            print(f"   other processes use {used:.0%} of a core; waiting for quiet", flush=True)
            told = True


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    # processes that appeared during the level count from 0; ones that vanished are lost
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


# ---------------------------------------------------------------------------------------------
# servers
class Server:
    name = ""
    label = ""
    include_ray = False

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.proc: subprocess.Popen | None = None
        self.procs: ProcessSet | None = None
        self.port = 0
        self.log_path = workdir / f"{self.name}.log"

    # request shape
    url = ""
    file_field = ""

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def healthy(self, client: httpx.Client) -> bool:
        raise NotImplementedError

    def start(self) -> float:
        with socket.socket() as sock:  # someone else's server on our port would answer for us
            if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"port {self.port} is already in use on 127.0.0.1")
        cmd, env = self.command()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.procs = ProcessSet(self.proc.pid, self.include_ray)
        deadline = started + self.args.startup_timeout
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                self.procs.refresh()  # remember every process, for clean-up even on failure
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} during "
                                       f"start-up; log: {self.log_path}\n{self.tail()}")
                try:
                    if self.healthy(client):
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} not healthy after {self.args.startup_timeout:.0f} s; "
                           f"log: {self.log_path}\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)  # serve run / uvicorn shut down cleanly
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._log.close()
        if self.procs is not None:
            left = self.procs.kill_leftovers()
            if left:
                print(f"   killed {len(left)} leftover {self.name} process(es): {left}", flush=True)


class OursServer(Server):
    name = "ours"
    label = "ours (Ray Serve)"
    include_ray = True
    file_field = "image"

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(args, workdir)
        self.config = args.serve_config.resolve()
        http = yaml.safe_load(self.config.read_text()).get("http_options", {})
        self.port = int(http.get("port", 8000))
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/image/matte/v1"

    def command(self):
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "BGR_MODELS_DIR": str(self.args.models_dir),
               "BGR_AUTH_ENABLED": "false"}  # the pipeline's throughput, without key checks
        env.pop("BGR_EXTRA_MODELS_DIR", None)
        env.pop("RAY_ADDRESS", None)  # always a fresh local cluster
        env["PYTHONUNBUFFERED"] = "1"
        cfg = self.config.relative_to(REPO) if self.config.is_relative_to(REPO) else self.config
        # as `bgremove serve` starts it: `serve run` on a local Ray without the dashboard
        return [sys.executable, "-m", "serve_app.serve_run", str(cfg)], env

    def healthy(self, client: httpx.Client) -> bool:
        r = client.get(f"{self.base}/health")
        if r.status_code != 200:
            return False
        missing = {m: h.get("detail") for m, h in r.json()["models"].items()
                   if h["status"] == "missing"}
        if missing:  # loud: no point waiting for a model whose file is not there
            raise RuntimeError(f"models missing: {missing}")
        return r.json().get("status") == "healthy"

    def stop(self) -> None:
        super().stop()
        # `ray stop --force` stops every Ray cluster of this machine: run it only when no other
        # one is up (our own processes were already killed above, one by one).
        others = foreign_ray()
        if others:
            print("   not running `ray stop --force`: another Ray cluster is up on this machine",
                  flush=True)
            return
        subprocess.run([str(VENV_BIN / "ray"), "stop", "--force"], cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def add_service_args(p: argparse.ArgumentParser) -> None:
    """The options of a bench that starts the service itself on its default config (its
    config, models folder, start-up limit, and whether another Ray cluster may run beside)."""
    p.add_argument("--serve-config", type=Path, default=REPO / "configs" / "local.yaml")
    p.add_argument("--models-dir", type=Path,
                   default=Path(os.environ.get("BGR_MODELS_DIR",
                                               "~/.cache/bgremove/models")).expanduser())
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--allow-running-ray", action="store_true")
    p.add_argument("--wait-quiet", type=float, default=60.0)


@contextmanager
def local_service(args: argparse.Namespace, prefix: str) -> Iterator[OursServer]:
    """`OursServer` started on a throw-away data folder of its own (database, artifacts),
    stopped and its folder removed on the way out."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.environ["BGR_DATA_DIR"] = tmp
        server = OursServer(args, Path(tmp))
        try:
            server.start()
            yield server
        finally:
            server.stop()


class RembgServer(Server):
    name = "rembg"
    label = "rembg (baseline)"
    file_field = "file"

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(args, workdir)
        self.port = args.rembg_port
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/api/remove"

    def command(self):
        home = self.workdir / "rembg-home"
        target = home / "models" / MODEL / f"{MODEL}.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(self.args.models_dir / f"{MODEL}.onnx", target)
            except OSError:
                shutil.copyfile(self.args.models_dir / f"{MODEL}.onnx", target)
        env = {**os.environ, "U2NET_HOME": str(home), "REMBG_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        return [sys.executable, str(REPO / "bench" / "rembg_server.py"), "--port", str(self.port)], env

    def healthy(self, client: httpx.Client) -> bool:
        r = client.get(f"{self.base}/health")
        return r.status_code == 200 and r.json().get("status") == "healthy"


def _shown(path: Path) -> Path:
    """`path` relative to the repository when it is inside it."""
    path = path.resolve()
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


# ---------------------------------------------------------------------------------------------
# load
async def _one(client: httpx.AsyncClient, server: Server,
               data: tuple[str, bytes]) -> tuple[float, str | None, float | None]:
    fname, body = data
    t0 = time.perf_counter()
    try:
        r = await client.post(server.url, files={server.file_field: (fname, body, "image/png")},
                              data={"model": MODEL})
        elapsed = time.perf_counter() - t0
    except httpx.HTTPError as exc:
        return time.perf_counter() - t0, f"{type(exc).__name__}: {exc}", None
    if r.status_code != 200:
        return elapsed, f"HTTP {r.status_code}: {r.text[:200]}", None
    if not r.content.startswith(PNG_MAGIC):
        return elapsed, f"not a PNG ({r.headers.get('content-type')})", None
    server_ms = r.headers.get("x-processing-time-ms")
    return elapsed, None, float(server_ms) if server_ms else None


async def run_level(server: Server, images: list[tuple[str, bytes]], concurrency: int,
                    requests: int, timeout: float) -> Level:
    level = Level(concurrency=concurrency, requests=requests)
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                elapsed, err, server_ms = await _one(client, server, images[i % len(images)])
                if err is None:
                    level.ok += 1
                    level.latencies_s.append(elapsed)
                    if server_ms is not None:
                        level.server_ms.append(server_ms)
                else:
                    level.errors += 1
                    if len(level.error_samples) < 5:
                        level.error_samples.append(err)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        level.wall_s = time.perf_counter() - t0
    return level


def bench_server(server: Server, images: list[tuple[str, bytes]], args: argparse.Namespace) -> ServerRun:
    run = ServerRun(server.name, server.label, loadavg_before=os.getloadavg())
    print(f"\n== {server.label}: starting ({' '.join(server.command()[0])})", flush=True)
    try:
        run.startup_s = server.start()
        print(f"   healthy after {run.startup_s:.1f} s", flush=True)
        procs = server.procs
        warm = asyncio.run(run_level(server, images, min(2, max(args.levels)), args.warmup, args.timeout))
        print(f"   warm-up: {warm.ok}/{args.warmup} ok, p50 {warm.pct(0.5) * 1e3:.0f} ms", flush=True)
        if warm.ok == 0:
            raise RuntimeError(f"every warm-up request failed: {warm.error_samples[:2]}")
        time.sleep(1.0)
        run.idle_rss = procs.rss()
        run.idle_pss = procs.pss()
        run.processes = len(procs.refresh())
        if args.verbose:
            print("\n".join("   " + row for row in procs.describe()))
        for c in args.levels:
            for attempt in range(1 + args.retries):
                wait_cpu_quiet(procs, args.wait_quiet)
                before, busy0, own0 = procs.cpu_seconds(), busy_seconds(), own_cpu()
                with PeakSampler(procs) as sampler:
                    level = asyncio.run(run_level(server, images, c, args.requests, args.timeout))
                after = procs.cpu_seconds()
                level.cpu_s = cpu_delta(before, after)
                by: dict[str, float] = {}
                for pid, label in procs.labels().items():
                    if pid in after:
                        by[label] = by.get(label, 0.0) + max(0.0, after[pid] - before.get(pid, 0.0))
                level.cpu_by_process = by
                level.client_cpu_s = own_cpu() - own0
                level.other_cpu_s = max(0.0, busy_seconds() - busy0 - level.cpu_s - level.client_cpu_s)
                noisy = level.other_cpu_s > 0.1 * max(level.cpu_s, 1.0)
                if not noisy or attempt == args.retries:
                    break
                print(f"   c={c}: other processes used {level.other_cpu_s:.1f} CPU s (server "
                      f"{level.cpu_s:.1f}); measuring this level again", flush=True)
            level.peak_rss = sampler.peak
            run.levels.append(level)
            d = level.as_dict()
            print(f"   c={c:<3} {d['rps']:6.2f} req/s  p50 {d['p50_ms']:7.0f} ms  p95 "
                  f"{d['p95_ms']:7.0f} ms  errors {d['errors']}  peak RSS {d['peak_rss_mib']:.0f} MiB"
                  f"  CPU {d['cpu_s_per_req']} s/req"
                  + (f"  server p50 {d['server_p50_ms']} ms" if d["server_p50_ms"] else "")
                  + f"  [CPU s: client {d['client_cpu_s']}, other {d['other_cpu_s']}]",
                  flush=True)
            if level.other_cpu_s > 0.1 * max(level.cpu_s, 1.0):
                print(f"      WARNING: other processes used {level.other_cpu_s:.1f} CPU s during "
                      "this level; the machine was not quiet", flush=True)
            if level.error_samples:
                print(f"      e.g. {level.error_samples[0]}")
            if args.verbose and len(level.cpu_by_process) > 1:
                print("      CPU s/req by process: " + ", ".join(
                    f"{k} {v}" for k, v in d["cpu_s_per_req_by_process"].items() if v >= 0.002))
            time.sleep(1.0)
    except Exception as exc:  # noqa: BLE001 - report and go on with the other server
        run.failed = str(exc)
        print(f"   FAILED: {exc}", file=sys.stderr, flush=True)
    finally:
        print(f"   stopping {server.name}", flush=True)
        server.stop()
    return run


# ---------------------------------------------------------------------------------------------
# report
def machine() -> dict[str, str]:
    model = "unknown CPU"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    import onnxruntime  # noqa: PLC0415
    import ray  # noqa: PLC0415
    try:
        from importlib.metadata import version  # noqa: PLC0415
        rembg_v = version("rembg")
    except Exception:  # noqa: BLE001
        rembg_v = "?"
    return {
        "cpu": f"{os.cpu_count()} logical cores ({psutil.cpu_count(logical=False)} physical), {model}",
        "memory": f"{mem:.1f} GiB RAM",
        "os": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "software": f"ray {ray.__version__}, onnxruntime {onnxruntime.__version__}, rembg {rembg_v}",
    }


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or x != x else format(x, spec)


def table(runs: dict[str, ServerRun], levels: list[int]) -> str:
    ours, base = runs.get("ours"), runs.get("rembg")
    head = ("| concurrency | ours req/s | rembg req/s | req/s ours/rembg | ours p50 ms | rembg p50 ms "
            "| ours p95 ms | rembg p95 ms | p95 ours/rembg | errors ours / rembg "
            "| peak RSS MiB ours / rembg | CPU s/req ours / rembg |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]

    def lv(run: ServerRun | None, c: int) -> Level | None:
        if run is None:
            return None
        return next((x for x in run.levels if x.concurrency == c), None)

    for c in levels:
        a, b = lv(ours, c), lv(base, c)
        rps_a, rps_b = (a.rps if a else None), (b.rps if b else None)
        p50_a, p50_b = (a.pct(0.5) * 1e3 if a else None), (b.pct(0.5) * 1e3 if b else None)
        p95_a, p95_b = (a.pct(0.95) * 1e3 if a else None), (b.pct(0.95) * 1e3 if b else None)
        ratio = rps_a / rps_b if rps_a is not None and rps_b else None
        p95r = p95_a / p95_b if p95_a is not None and p95_b else None
        cpu_a = a.cpu_s / a.ok if a and a.ok else None
        cpu_b = b.cpu_s / b.ok if b and b.ok else None
        rows.append(
            f"| {c} | {_fmt(rps_a, '.2f')} | {_fmt(rps_b, '.2f')} "
            f"| {_fmt(ratio, '.2f')}{'x' if ratio else ''} "
            f"| {_fmt(p50_a, '.0f')} | {_fmt(p50_b, '.0f')} | {_fmt(p95_a, '.0f')} | {_fmt(p95_b, '.0f')} "
            f"| {_fmt(p95r, '.2f')}{'x' if p95r else ''} "
            f"| {a.errors if a else '—'} / {b.errors if b else '—'} "
            f"| {_fmt(a.peak_rss / 2**20 if a else None, '.0f')} "
            f"/ {_fmt(b.peak_rss / 2**20 if b else None, '.0f')} "
            f"| {_fmt(cpu_a, '.2f')} / {_fmt(cpu_b, '.2f')} |"
        )
    return "\n".join(rows)


def reading(runs: dict[str, ServerRun], levels: list[int]) -> list[str]:
    """A few sentences computed from the figures (the doc's hand-written notes sit outside)."""
    ours, base = runs.get("ours"), runs.get("rembg")
    if not ours or not base or ours.failed or base.failed:
        return ["One of the servers did not complete the run; no comparison."]
    out = []
    for c in levels:
        a = next((x for x in ours.levels if x.concurrency == c), None)
        b = next((x for x in base.levels if x.concurrency == c), None)
        if not a or not b or not b.rps:
            continue
        r = a.rps / b.rps
        p = a.pct(0.95) / b.pct(0.95)
        verdict = ("faster" if r > 1.05 else "slower" if r < 0.95 else "on par")
        out.append(f"concurrency {c}: ours {r:.2f}x rembg's throughput ({verdict}), "
                   f"p95 {p:.2f}x rembg's.")
    best = max(ours.levels, key=lambda x: x.rps, default=None)
    best_b = max(base.levels, key=lambda x: x.rps, default=None)
    if best and best_b and best_b.rps:
        goal = best.rps >= 1.5 * best_b.rps
        out.append(f"Peak throughput: ours {best.rps:.2f} req/s (c={best.concurrency}), rembg "
                   f"{best_b.rps:.2f} req/s (c={best_b.concurrency}): "
                   f"{best.rps / best_b.rps:.2f}x; the 1.5x target is "
                   f"{'met' if goal else 'NOT met'}.")
    out.append(f"Idle memory after warm-up (sum of RSS / of PSS): ours {ours.idle_rss / 2**20:.0f} / "
               f"{ours.idle_pss / 2**20:.0f} MiB over {ours.processes} processes; rembg "
               f"{base.idle_rss / 2**20:.0f} / {base.idle_pss / 2**20:.0f} MiB over "
               f"{base.processes} process(es). RSS double-counts pages shared between "
               "processes (Ray's ~10 Python processes share libraries); PSS splits them.")
    return out


def u2netp_precision(models_dir: Path) -> str:
    """What `precision: auto` gives u2netp on this CPU with the weights in `models_dir`."""
    from pipelines.catalog import load_catalog
    from pipelines.weights import find_int8

    if find_int8(load_catalog().get("u2netp"), [models_dir.expanduser()]) is not None:
        return "int8 (its verified build, `make int8`, docs/models.md)"
    return "float32 (no verified int8 build in the models folder)"


def render_section(runs: dict[str, ServerRun], args: argparse.Namespace, command: str) -> str:
    info = machine()
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        DOC_BEGIN,
        "<!-- Generated by bench/bench_matte.py; everything between these markers is rewritten "
        "on each run. -->",
        "",
        "### Last run",
        "",
        f"- Date: {now}",
        f"- Machine: {info['cpu']}; {info['memory']}; no GPU",
        f"- OS / software: {info['os']}; {info['software']}",
        f"- Load: {args.requests} requests per concurrency level (after {args.warmup} warm-up "
        f"requests), images cycled: {', '.join(IMAGES)} (512x512, 451x300, 600x400 PNG); "
        "client (httpx) on the same machine, 127.0.0.1 only.",
        f"- Ours: `serve run {_shown(args.serve_config)}`; "
        "rembg: `bench/rembg_server.py` (uvicorn, 1 process).",
        f"- Ours runs u2netp in {u2netp_precision(args.models_dir)}; rembg the float file.",
        "- Start-up to healthy: "
        + "; ".join(f"{r.name} {r.startup_s:.1f} s" for r in runs.values()),
        "",
        "```sh",
        command,
        "```",
        "",
        table(runs, args.levels),
        "",
        "Columns: req/s = successful requests / wall time of the level; p50/p95 = client-side "
        "latency; peak RSS = highest sum of RSS over the server's processes, sampled every "
        "0.2 s during the level (for ours: every Ray process the run started: GCS, raylet, "
        "dashboard, controller, proxy, replicas, ...); CPU s/req = CPU time of those processes "
        "during the level / successful requests (2 cores => at most 2 / (CPU s/req) req/s).",
        "",
    ]
    for r in runs.values():
        if r.failed:
            lines += [f"**{r.label} failed:** `{r.failed.splitlines()[0]}`", ""]
    lines += [f"- {s}" for s in reading(runs, args.levels)]
    ours = runs.get("ours")
    if ours and ours.levels and any(x.server_ms for x in ours.levels):
        lines += ["", "Ours, server-side `X-Processing-Time-Ms` (ingress: decode + mask + "
                  "composite + encode) p50 per level: "
                  + ", ".join(f"c={x.concurrency}: {x.pct(0.5, x.server_ms):.0f} ms"
                              for x in ours.levels if x.server_ms) + "."]
    if ours and ours.levels and len(ours.levels[-1].cpu_by_process) > 1:
        top = ours.levels[-1]
        items = sorted(top.cpu_by_process.items(), key=lambda kv: -kv[1])
        lines += ["", f"Ours, where the server CPU went at c={top.concurrency} (CPU s per request, "
                  f"total {top.cpu_s / max(top.ok, 1):.3f}): "
                  + ", ".join(f"`{k}` {v / max(top.ok, 1):.3f}" for k, v in items[:8]
                              if v / max(top.ok, 1) >= 0.002) + "."]
    lines += ["", "CPU seconds used during the levels by the load generator / by every other "
              "process on the machine (interference; should be near 0): "
              + "; ".join(f"{r.name} " + ", ".join(f"c={x.concurrency}: {x.client_cpu_s:.1f} / "
                                                    f"{x.other_cpu_s:.1f}" for x in r.levels)
                          for r in runs.values() if r.levels) + "."]
    lines += ["", DOC_END]
    return "\n".join(lines)


DOC_HEAD = """# Benchmarks

## `POST /image/matte/v1` vs rembg (u2netp, CPU)

What is measured: the same u2netp ONNX file behind (a) our Ray Serve application
(`bench/bench_serve.yaml`: `configs/local.yaml`'s light pool, u2netp only) and (b) rembg's
HTTP server path (`bench/rembg_server.py`: FastAPI, `rembg.remove` in a worker thread, one
session created at start-up, as `rembg s` does). Both return a transparent PNG at the input's
resolution. The servers run one after the other, never at the same time.

Reproduce (from the repository root; fetches u2netp.onnx with `bgremove models pull` if needed):

```sh
.venv/bin/python bench/bench_matte.py                # both servers, 60 requests x levels 1,4,16
.venv/bin/python bench/bench_matte.py --only ours --requests 30 --levels 4   # quick look
```

"""


def write_doc(path: Path, section: str, notes: str | None) -> None:
    if path.exists():
        text = path.read_text()
        if DOC_BEGIN in text and DOC_END in text:
            start, end = text.index(DOC_BEGIN), text.index(DOC_END) + len(DOC_END)
            path.write_text(text[:start] + section + text[end:])
            return
        path.write_text(text.rstrip() + "\n\n" + section + "\n" + (notes or ""))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DOC_HEAD + section + "\n" + (notes or ""))


# ---------------------------------------------------------------------------------------------
def ensure_weights(models_dir: Path) -> None:
    path = models_dir / f"{MODEL}.onnx"
    if path.is_file():
        return
    print(f"{path} missing: bgremove models pull {MODEL}", flush=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BGR_MODELS_DIR": str(models_dir)}
    subprocess.run([str(VENV_BIN / "bgremove"), "models", "pull", MODEL], cwd=REPO, env=env, check=True)
    if not path.is_file():
        raise SystemExit(f"bgremove models pull did not produce {path}")


def foreign_ray() -> list[str]:
    """Ray daemons already running (someone else's cluster): starting ours beside them would
    skew the figures, and `ray stop --force` at the end would kill them."""
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or ())
            if p.info["name"] in ("raylet", "gcs_server") or "/ray/core/src/ray/raylet/raylet" in cmd:
                out.append(f"{p.pid} {cmd[:100]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def wait_for_quiet(args: argparse.Namespace) -> bool:
    """No other Ray cluster on the machine: it would compete for the 2 cores, and ours would be
    told apart from it only by process tree."""
    if args.allow_running_ray:
        return True
    others = foreign_ray()
    deadline = time.monotonic() + args.wait_quiet
    if others and args.wait_quiet:
        print(f"another Ray cluster is up; waiting up to {args.wait_quiet:.0f} s for it to stop",
              flush=True)
    while others and time.monotonic() < deadline:
        time.sleep(5)
        others = foreign_ray()
    if others:
        print("Another Ray cluster is running on this machine (someone's tests?); it would skew "
              "the figures. Wait for it (--wait-quiet S) or pass --allow-running-ray:\n  "
              + "\n  ".join(others), file=sys.stderr)
        return False
    time.sleep(2.0 if args.wait_quiet else 0.0)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=60, help="requests per concurrency level (60)")
    p.add_argument("--levels", default="1,4,16", help="concurrency levels, comma-separated (1,4,16)")
    p.add_argument("--only", choices=("ours", "rembg"), help="benchmark one server only")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown file to write (default docs/benchmarks.md when both servers "
                        "ran; with --only nothing is written unless --out is given)")
    p.add_argument("--warmup", type=int, default=6, help="warm-up requests per server (6)")
    p.add_argument("--models-dir", type=Path,
                   default=Path(os.environ.get("BGR_MODELS_DIR", "~/.cache/bgremove/models")),
                   help="where u2netp.onnx is (pulled there if absent); $BGR_MODELS_DIR or "
                        "~/.cache/bgremove/models")
    p.add_argument("--serve-config", type=Path, default=SERVE_YAML,
                   help="Serve config for ours (default bench/bench_serve.yaml); a variant lets "
                        "you compare pool settings")
    p.add_argument("--rembg-port", type=int, default=8078)
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, s")
    p.add_argument("--startup-timeout", type=float, default=240.0)
    p.add_argument("--json", type=Path, help="also dump raw figures as JSON here")
    p.add_argument("--allow-running-ray", action="store_true",
                   help="run even if another Ray cluster is up on this machine")
    p.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                   help="wait up to S seconds for another Ray cluster to go away, and before each "
                        "level for other processes to go quiet (60)")
    p.add_argument("--retries", type=int, default=1,
                   help="measure a level again when other processes used >10%% of the server's "
                        "CPU during it (1)")
    p.add_argument("-v", "--verbose", action="store_true", help="list the server's processes")
    args = p.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if not args.levels or min(args.levels) < 1 or args.requests < 1:
        p.error("--levels and --requests must be positive")
    args.models_dir = args.models_dir.expanduser().resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join([".venv/bin/python bench/bench_matte.py", *(sys.argv[1:] if argv is None else argv)])
    images = [(n, (media_dir() / n).read_bytes()) for n in IMAGES]
    ensure_weights(args.models_dir)

    which = [args.only] if args.only else ["ours", "rembg"]

    runs: dict[str, ServerRun] = {}
    with tempfile.TemporaryDirectory(prefix="bench-matte-") as tmp:
        workdir = Path(tmp)
        for name in which:
            if not wait_for_quiet(args):
                runs[name] = ServerRun(name, name, failed="not run: another Ray cluster was up")
                continue
            server = (OursServer if name == "ours" else RembgServer)(args, workdir)
            runs[name] = bench_server(server, images, args)
            if runs[name].failed and args.verbose:
                print(server.tail(60), file=sys.stderr)

    print("\n" + table(runs, args.levels) + "\n")
    for line in reading(runs, args.levels):
        print("- " + line)
    if args.json:
        args.json.write_text(json.dumps({
            name: {"label": r.label, "failed": r.failed, "startup_s": r.startup_s,
                   "loadavg_before": r.loadavg_before,
                   "idle_rss_mib": r.idle_rss / 2**20, "idle_pss_mib": r.idle_pss / 2**20,
                   "processes": r.processes, "levels": [x.as_dict() for x in r.levels]}
            for name, r in runs.items()
        }, indent=2))
    out = args.out or (None if args.only else REPO / "docs" / "benchmarks.md")
    if out is not None:
        write_doc(out, render_section(runs, args, command), None)
        print(f"\nwrote {out}")
    return 1 if any(r.failed for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
