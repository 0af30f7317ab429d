"""Issue 31's reliability figures, from outside, on the default config with API keys on and
PostgreSQL as the database:

    .venv/bin/python bench/bench_reliability.py fuzz --requests 100000
    .venv/bin/python bench/bench_reliability.py soak --minutes 60 --out docs/benchmarks.md

Both start a throw-away PostgreSQL server (the machine's own binaries, `tests/pg_server.py`), a
key with credits in it, a webhook receiver on 127.0.0.1 and `configs/local.yaml` as `bgremove
serve` runs it, with `BGR_AUTH_ENABLED=true` and `BGR_DATABASE_URL` pointing at that server.

`fuzz`: every route of the service's own OpenAPI document, each request built at random from
its parameters and body fields: nasty strings and numbers, random, truncated and bit-flipped
images (a few valid ones), JSON of the wrong shape, a valid key, a wrong one or none. Counted:
answers by status, and every answer >= 500 or no answer at all (kept with its request). Requests
whose image decodes take one lane of their own, so the fuzz never builds the model queue that
admission control refuses with 503 (that is the overload bench's subject, not this one's).
Afterwards /health must answer 200 and a real photo must be cut out.

`soak`: `--clients` closed-loop clients for `--minutes` of mixed traffic (default mattes of
photos of random size, shotguns over every model, HD jobs, 2 s video jobs, /v1 jobs from an
upload with a webhook); every create carries an Idempotency-Key and is retried with it after
a transport error or a 503, polls go on through outages. On the way, `--kills` (default: the
whole service at minute 8, PostgreSQL at minute 20, the job worker replica at minute 54; each
with SIGKILL). At the end: every job the clients were given reached `completed`; no job was
charged twice (usage rows per job); webhook deliveries per job and event; answers outside the
outage windows that were not 2xx; RSS per process each minute, flatness measured between the
service's restart and the worker's kill (both reset what they kill).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime as dt
import http.server
import io
import json
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from bench_soak import photo_bytes, process_name, sample  # noqa: E402
from pg_server import PostgresServer  # noqa: E402

from bench_matte import OursServer, add_service_args, wait_for_quiet  # noqa: E402
from docs_section import write_section  # noqa: E402
from media import PHOTOS, clip, photo  # noqa: E402

DOC_BEGIN, DOC_END = "<!-- bench_reliability:start -->", "<!-- bench_reliability:end -->"


# ---- the stack: PostgreSQL, a key, a webhook receiver, the service -----------------------
class Receiver:
    """Webhook deliveries counted per (job id, event)."""

    def __init__(self) -> None:
        self.got: collections.Counter[tuple[str, str]] = collections.Counter()
        got = self.got

        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                got[(body["job_id"], body["event"])] += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


class KeyedServer(OursServer):
    """configs/local.yaml with keys on, on PostgreSQL, webhooks allowed to 127.0.0.1."""

    def __init__(self, args, workdir: Path, database_url: str) -> None:
        super().__init__(args, workdir)
        self.database_url = database_url

    def command(self):
        cmd, env = super().command()
        env.update(BGR_AUTH_ENABLED="true", BGR_DATABASE_URL=self.database_url,
                   BGR_DATA_DIR=str(self.workdir / "data"),
                   BGR_URL_ALLOWED_NETWORKS='["127.0.0.1/32"]')
        return cmd, env

    def crash(self) -> None:
        """SIGKILL every process of the service (the launcher, Ray, every replica)."""
        assert self.procs is not None
        self.procs.refresh()
        self.procs.kill_leftovers()
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self._log.close()

    def restart(self) -> float:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the dead proxy's port is freed a little later
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    break
            time.sleep(0.5)
        self.log_path = self.workdir / f"ours-{int(time.time())}.log"
        return self.start()


@dataclass
class Stack:
    pg: PostgresServer
    server: KeyedServer
    key: str
    key_id: str
    receiver: Receiver
    database_url: str


def start_stack(args: argparse.Namespace, workdir: Path) -> Stack:
    import psycopg

    from serve_app.core.keys import KeyStore

    try:
        pg = PostgresServer().start()
    except pytest.skip.Exception as exc:  # the test helper's way of saying "not here"
        sys.exit(f"no PostgreSQL server to run against: {exc}")
    admin = pg.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE bgremove")
    url = pg.url.rsplit("/", 1)[0] + "/bgremove"
    record, secret = KeyStore(url).create("bench", credits=1e9, rate_limit_per_min=10**6,
                                          max_concurrent_jobs=10**4)
    server = KeyedServer(args, workdir, url)
    print(f"starting the service on PostgreSQL {url} with keys on", flush=True)
    server.start()
    return Stack(pg, server, secret, record.key_id, Receiver(), url)


def stop_stack(stack: Stack, keep_logs: Path) -> None:
    stack.server.stop()
    keep_logs.mkdir(parents=True, exist_ok=True)
    for log in stack.server.workdir.glob("*.log"):  # the service's output, tracebacks and all
        log.replace(keep_logs / log.name)
    stack.receiver.server.shutdown()
    stack.pg.remove()


# ---- fuzz ---------------------------------------------------------------------------------
NASTY = ["", " ", "../../etc/passwd", "..%2F..%2F", "\x00", "%00", "tiny", "NaN", "inf", "-1",
         "1e309", "#zzz", "255,0", "256,0,0", "all", "a" * 5000, "\u202e", "{}", "[]", "null",
         "auto", "u2netp", "png", "webm", "true", "0", "1", "http://169.254.169.254/latest",
         "http://127.0.0.1:1/x", "file:///etc/passwd", "ftp://x", "red", "#ff000080"]


def png(size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 40, 40, 255)[:len(mode)]).save(buf, "PNG")
    return buf.getvalue()


VALID, CUTOUT = png(), png(mode="RGBA")


def nasty_value(rng: random.Random):
    pick = rng.random()
    if pick < 0.5:
        return rng.choice(NASTY)
    if pick < 0.7:
        return rng.choice([rng.randint(-10**12, 10**12), rng.random() * 10**rng.randint(-5, 9),
                           float("nan"), float("inf"), 0, 1, -1])
    if pick < 0.8:
        return rng.choice([None, True, False, [], {}, [1, "a"], {"a": {"b": None}}])
    return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 30)))


def image_bytes(rng: random.Random) -> bytes:
    kind = rng.choices(["random", "truncated", "flipped", "valid", "cutout"],
                       [40, 30, 29.5, 0.25, 0.25])[0]
    if kind == "random":
        return rng.randbytes(rng.randint(0, 3000))
    if kind in ("valid", "cutout"):
        return VALID if kind == "valid" else CUTOUT
    data = bytearray(VALID)
    if kind == "truncated":
        data = data[:rng.randint(0, len(data) - 1)]
    else:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    if decodes(bytes(data)):  # still an image (only its end was cut, or a flip missed): cut more
        return bytes(data[:rng.randint(0, len(data) // 3)])
    return bytes(data)


def decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any failure means the service refuses it before a model
        return False


@dataclass
class Route:
    method: str
    path: str
    params: list[str]
    form: list[str] = field(default_factory=list)  # multipart fields (files among them)
    files: list[str] = field(default_factory=list)
    json: list[str] = field(default_factory=list)


def routes_of(openapi: dict) -> list[Route]:
    schemas = openapi.get("components", {}).get("schemas", {})

    def props(schema: dict) -> tuple[list[str], list[str]]:
        if "$ref" in schema:
            schema = schemas.get(schema["$ref"].rsplit("/", 1)[1], {})
        names, files = [], []
        for name, p in schema.get("properties", {}).items():
            names.append(name)
            if p.get("format") == "binary" or p.get("contentMediaType"):
                files.append(name)
        return names, files

    out = []
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            r = Route(method.upper(), path, [p["name"] for p in op.get("parameters", [])
                                             if p.get("in") == "query"])
            content = op.get("requestBody", {}).get("content", {})
            for media, body in content.items():
                names, files = props(body.get("schema", {}))
                if "json" in media:
                    r.json = names
                else:
                    r.form, r.files = names, files
            out.append(r)
    return out


def fuzz_request(rng: random.Random, route: Route, key: str) -> dict:
    path = route.path
    while "{" in path:  # path parameters: a random id, a real-looking one, or junk
        a, rest = path.split("{", 1)
        value = rng.choice([str(uuid.uuid4()), "x", "..", "%2e%2e", "a" * 300, "0"])
        path = a + value + rest.split("}", 1)[1]
    auth = rng.choices(["valid", "wrong", "none"], [80, 10, 10])[0]
    headers = {"X-Api-Key": key} if auth == "valid" else (
        {"X-Api-Key": "bgr_" + rng.randbytes(8).hex()} if auth == "wrong" else {})
    if rng.random() < 0.1:
        # printable ASCII without surrounding blanks: what HTTP lets a client send at all
        headers["Idempotency-Key"] = rng.choice([
            *(v for v in NASTY if v.isascii() and v.isprintable() and v == v.strip()),
            str(uuid.uuid4())])
    req: dict = {"method": route.method, "url": path, "headers": headers}
    params = {p: str(nasty_value(rng)) for p in route.params if rng.random() < 0.5}
    if params:
        req["params"] = params
    if route.files or route.form:
        files = {f: ("x.png", image_bytes(rng), rng.choice(["image/png", "video/mp4", "x/y"]))
                 for f in (route.files or ["image"]) if rng.random() < 0.85}
        data = {f: str(nasty_value(rng)) for f in route.form
                if f not in route.files and rng.random() < 0.4}
        if rng.random() < 0.05:  # a body that is not multipart at all
            req["content"] = rng.randbytes(rng.randint(0, 500))
            headers["Content-Type"] = rng.choice(["multipart/form-data", "application/json"])
        else:
            req["files"], req["data"] = files, data
    elif route.json or route.method in ("POST", "PUT", "PATCH"):
        body = {f: nasty_value(rng) for f in route.json if rng.random() < 0.6}
        if "image" in route.json and rng.random() < 0.5:
            body["image"] = base64.b64encode(image_bytes(rng)).decode()
        if rng.random() < 0.1:
            body = rng.choice([[], "x", None, 3, {"extra": 1}])
        req["content"] = json.dumps(body, allow_nan=True).encode()
        headers["Content-Type"] = "application/json"
    return req


def carries_image(req: dict) -> bool:
    blobs = [f[1] for f in req.get("files", {}).values()]
    if "content" in req and req["headers"].get("Content-Type") == "application/json":
        try:
            body = json.loads(req["content"])
            if isinstance(body, dict) and isinstance(body.get("image"), str):
                blobs.append(base64.b64decode(body["image"]))
        except ValueError:
            pass
    return any(decodes(b) for b in blobs)


async def fuzz(base: str, key: str, total: int, concurrency: int, seed: int) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        routes = [r for r in routes_of((await c.get("/openapi.json")).json())
                  if not r.path.startswith(("/docs", "/redoc", "/openapi"))]
    rng = random.Random(seed)
    statuses: collections.Counter[str] = collections.Counter()
    bad: list[str] = []
    queue: asyncio.Queue = asyncio.Queue(maxsize=concurrency * 4)
    lane: asyncio.Queue = asyncio.Queue()  # requests whose image decodes, one at a time
    started = time.monotonic()

    async def produce() -> None:
        for _ in range(total):
            await queue.put(fuzz_request(rng, rng.choice(routes), key))
        for _ in range(concurrency):
            await queue.put(None)

    async def send(c: httpx.AsyncClient, req: dict) -> None:
        try:
            r = await c.request(**req)
            statuses[str(r.status_code)] += 1
            if r.status_code == 503 and "generator is not configured" in r.text:
                statuses["503 generate: no generator configured (documented)"] += 1
                statuses[str(r.status_code)] -= 1
            elif r.status_code >= 500:
                bad.append(f"{req['method']} {req['url']} -> {r.status_code} {r.text[:200]}")
        except httpx.HTTPError as exc:
            statuses[f"no answer ({type(exc).__name__})"] += 1
            bad.append(f"{req['method']} {req['url']} -> {type(exc).__name__}")

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            while (req := await queue.get()) is not None:
                if carries_image(req):
                    await lane.put(req)
                    continue
                await send(c, req)
                done = sum(statuses.values())
                if done % 5000 == 0:
                    print(f"{done} requests, {time.monotonic() - started:.0f} s, "
                          f"{len(bad)} bad", flush=True)

    async def one_at_a_time() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            while (req := await lane.get()) is not None:
                await send(c, req)

    async def workers() -> None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await lane.put(None)

    await asyncio.gather(produce(), workers(), one_at_a_time())
    return {"statuses": dict(statuses), "bad": bad, "seconds": time.monotonic() - started,
            "routes": len(routes)}


def after_check(base: str, key: str) -> tuple[int, int]:
    with httpx.Client(base_url=base, timeout=120, headers={"X-Api-Key": key}) as c:
        health = c.get("/health").status_code
        cut = c.post("/image/matte/v1", files={"image": ("a.png", photo().read_bytes())})
    return health, cut.status_code


def run_fuzz(args: argparse.Namespace, stack: Stack) -> str:
    result = asyncio.run(fuzz(stack.server.base, stack.key, args.requests, args.concurrency,
                              args.seed))
    health, cut = after_check(stack.server.base, stack.key)
    alive = stack.server.proc is not None and stack.server.proc.poll() is None
    bad = result["bad"]
    lines = [f"### {args.requests:,} fuzzed requests, keys on, PostgreSQL\n",
             f"`bench/bench_reliability.py fuzz --requests {args.requests}`, "
             f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, 2 cores, `configs/local.yaml`, "
             f"{result['routes']} routes from the service's OpenAPI document, "
             f"{args.concurrency} at a time, seed {args.seed}: "
             f"{result['seconds'] / 60:.1f} min ({args.requests / result['seconds']:.0f} req/s).\n",
             "| answer | count |", "|---|---|"]
    lines += [f"| {s} | {n} |" for s, n in sorted(result["statuses"].items())]
    lines += ["", f"Answers >= 500 or none: **{len(bad)}**. After: `/health` {health}, a photo "
              f"cut out {cut}, the service {'running' if alive else 'NOT running'}."]
    if bad:
        lines += ["", "First ones:", "", *[f"- `{b}`" for b in bad[:20]]]
    return "\n".join(lines) + "\n"


# ---- soak with kills ----------------------------------------------------------------------
@dataclass
class Soak:
    counts: collections.Counter = field(default_factory=collections.Counter)
    outage_counts: collections.Counter = field(default_factory=collections.Counter)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> what made it
    outage: bool = False
    unexpected: list[str] = field(default_factory=list)

    def count(self, what: str, ok: bool) -> None:
        (self.outage_counts if self.outage else self.counts)[what] += 1
        if not ok and not self.outage:
            self.unexpected.append(f"{time.strftime('%H:%M:%S')} {what}")


async def soak_traffic(stack: Stack, minutes: float, clients: int, soak: Soak) -> None:
    base, headers = stack.server.base, {"X-Api-Key": stack.key}
    rng = random.Random(7)
    images = [Image.open(photo(p)).convert("RGB") for p in PHOTOS]
    video = clip(2.0, 10, (854, 480), head_in_frame=True).read_bytes()
    end = time.monotonic() + minutes * 60

    async def create(c: httpx.AsyncClient, what: str, **req) -> httpx.Response | None:
        """A create with an Idempotency-Key, retried with it through outages."""
        req.setdefault("headers", {})["Idempotency-Key"] = str(uuid.uuid4())
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                r = await c.post(**req)
                if r.status_code != 503 and r.status_code < 500:
                    soak.count(f"{what} {r.status_code}", r.status_code < 300)
                    return r
                soak.count(f"{what} {r.status_code} (retried)", False)
            except httpx.HTTPError as exc:
                soak.count(f"{what} {type(exc).__name__} (retried)", False)
            await asyncio.sleep(2.0)
        return None

    async def poll(c: httpx.AsyncClient, what: str, url: str) -> None:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                r = await c.get(url)
                if r.status_code == 200:
                    if what == "v1" and r.json()["status"] in ("processing", "created"):
                        await asyncio.sleep(1.0)
                        continue
                    ok = what != "v1" or r.json()["status"] == "completed"
                    soak.count(f"{what} result {r.status_code}"
                               + ("" if what != "v1" else f" {r.json()['status']}"), ok)
                    return
                # (while the service restarts, Serve's proxy answers 404 until the app is back)
                if r.status_code != 202 and r.status_code < 500 and not (
                        soak.outage and r.status_code == 404):
                    soak.count(f"{what} result {r.status_code}", False)
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1.0)
        soak.count(f"{what} result never", False)

    async def one(c: httpx.AsyncClient, kind: str) -> None:
        if kind in ("matte", "shotgun"):
            try:
                if kind == "matte":
                    r = await c.post(f"{base}/image/matte/v1",
                                     files={"image": ("a.jpg", photo_bytes(rng, images))})
                else:
                    r = await c.post(f"{base}/remove-background", json={
                        "image": base64.b64encode(photo_bytes(rng, images)).decode(),
                        "include_models": ["all"]})
                soak.count(f"{kind} {r.status_code}", r.status_code == 200)
            except httpx.HTTPError as exc:
                soak.count(f"{kind} {type(exc).__name__}", False)
                await asyncio.sleep(2.0)
        elif kind == "hd":
            r = await create(c, "hd submit", url=f"{base}/image/hd/submit/v1",
                             files={"image": ("a.jpg", photo_bytes(rng, images))})
            if r is not None and r.status_code == 202:
                soak.jobs[r.json()["uuid"]] = "hd"
                await poll(c, "hd", f"{base}/image/hd/result/{r.json()['uuid']}")
        elif kind == "video":
            r = await create(c, "video submit", url=f"{base}/video/submit/v1",
                             files={"video": ("a.mp4", video, "video/mp4")})
            if r is not None and r.status_code == 202:
                soak.jobs[r.json()["uuid"]] = "video"
                await poll(c, "video", f"{base}/video/result/{r.json()['uuid']}")
        else:
            up = await create(c, "upload", url=f"{base}/api/upload",
                              files={"file": ("a.jpg", photo_bytes(rng, images), "image/jpeg")})
            if up is None or up.status_code != 201:
                return
            r = await create(c, "v1 create", url=f"{base}/v1/jobs", json={
                "upload_id": up.json()["upload_id"], "webhook_url": stack.receiver.url,
                "webhook_secret": "s3cret"})
            if r is not None and r.status_code in (200, 201, 202):
                soak.jobs[r.json()["job_id"]] = "v1"
                await poll(c, "v1", f"{base}/v1/jobs/{r.json()['job_id']}")

    async def loop(i: int) -> None:
        kinds = ["matte", "v1", "shotgun", "hd", "matte", "video"]
        n = i
        async with httpx.AsyncClient(timeout=600, headers=headers) as c:
            while time.monotonic() < end:
                await one(c, kinds[n % len(kinds)])
                n += 1

    await asyncio.gather(*(loop(i) for i in range(clients)))


def job_worker_pids(server: KeyedServer) -> list[int]:
    assert server.procs is not None
    return [p.pid for p in server.procs.refresh() if process_name(p).endswith(":JobWorker")]


def wait_healthy(base: str, limit_s: float = 300) -> float:
    started = time.monotonic()
    with httpx.Client(timeout=5) as c:
        while time.monotonic() - started < limit_s:
            try:
                if c.get(f"{base}/health").status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
    raise RuntimeError(f"not healthy {limit_s:.0f} s after the kill")


def chaos(stack: Stack, soak: Soak, kills: list[tuple[str, float]], samples: dict,
          events: list[str], stop: threading.Event, t0: float) -> None:
    """The kill schedule and the minute samples, in a thread beside the traffic."""
    pending = sorted(kills, key=lambda k: k[1])
    minute = 0
    while not stop.is_set():
        now = (time.monotonic() - t0) / 60
        if pending and now >= pending[0][1]:
            what, _ = pending.pop(0)
            at = time.monotonic()
            soak.outage = True
            if what == "service":
                stack.server.crash()
                events.append(f"minute {now:.1f}: SIGKILL to all "
                              f"{len(stack.server.procs.seen)} processes of the service")
                took = stack.server.restart()
                events.append(f"  service started again and healthy after {took:.0f} s")
            elif what == "postgres":
                stack.pg.kill()
                events.append(f"minute {now:.1f}: SIGKILL to PostgreSQL's postmaster; 20 s down")
                time.sleep(20)
                stack.pg.start()
                took = wait_healthy(stack.server.base)
                events.append(f"  PostgreSQL started again (crash recovery); service healthy "
                              f"{took:.0f} s later")
            else:
                pids = job_worker_pids(stack.server)
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                events.append(f"minute {now:.1f}: SIGKILL to the job worker replica {pids}")
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not (
                        set(job_worker_pids(stack.server)) - set(pids)):
                    time.sleep(1)
                took = wait_healthy(stack.server.base)
                events.append(f"  a new worker replica after {time.monotonic() - at:.0f} s "
                              f"({job_worker_pids(stack.server)})")
            time.sleep(30)  # answers in the first 30 s after recovery still count as outage
            soak.outage = False
            samples.setdefault("restarts", []).append((what, int(now) + 1))
        if now >= minute + 1:
            minute += 1
            samples[minute] = sample(stack.server)
            print(f"minute {minute}: {sum(samples[minute].values()):.0f} MiB; "
                  f"{sum(soak.counts.values())} answers, {len(soak.unexpected)} unexpected",
                  flush=True)
        time.sleep(1.0)


def settle(stack: Stack, limit_s: float = 900) -> dict[str, int]:
    """Wait for every job in the database to end; their states."""
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.database_url)
    deadline = time.monotonic() + limit_s
    while True:
        with engine.connect() as conn:
            states = dict(conn.execute(text("SELECT state, count(*) FROM jobs GROUP BY state"))
                          .all())
        if set(states) <= {"completed", "failed"} or time.monotonic() > deadline:
            return states
        time.sleep(5)


def accounting(stack: Stack, soak: Soak) -> dict:
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.database_url)
    with engine.connect() as conn:
        state = dict(conn.execute(text("SELECT job_id, state FROM jobs")).all())
        charged = collections.Counter(dict(conn.execute(text(
            "SELECT job_id, count(*) FROM usage WHERE job_id IS NOT NULL GROUP BY job_id")).all()))
        webhook_state = collections.Counter(r[0] for r in conn.execute(text(
            "SELECT webhook_state FROM jobs WHERE webhook_url IS NOT NULL")).all())
        rerun = conn.execute(text("SELECT count(*) FROM jobs WHERE attempts > 1")).scalar()
    mine = soak.jobs
    lost = [j for j in mine if state.get(j) != "completed"]
    double = [j for j, n in charged.items() if n > 1]
    uncharged = [j for j in mine if state.get(j) == "completed" and charged[j] == 0]
    hooks = stack.receiver.got
    completed_v1 = [j for j, k in mine.items() if k == "v1" and state.get(j) == "completed"]
    missing_hooks = [j for j in completed_v1 if hooks[(j, "job_completed")] == 0]
    dup_hooks = {k: n for k, n in hooks.items() if n > 1}
    return {"jobs": len(mine), "db_jobs": len(state), "lost": lost, "double": double,
            "uncharged": uncharged, "webhooks": sum(hooks.values()),
            "webhook_states": dict(webhook_state), "missing_hooks": missing_hooks,
            "dup_hooks": dup_hooks, "rerun": rerun,
            "by_kind": collections.Counter(mine.values())}


def memory_table(samples: dict) -> tuple[str, str]:
    restarts = dict(samples.get("restarts", []))
    minutes = sorted(k for k in samples if isinstance(k, int))
    begin = restarts.get("service", 0) + 2
    end = (restarts.get("worker", minutes[-1] + 1) - 1)
    window = [m for m in minutes if begin <= m <= end]
    if len(window) < 2:
        return "", "no window between the kills to measure memory in"
    first, mid, last = window[0], window[len(window) // 2], window[-1]
    names = sorted(samples[last], key=lambda n: -samples[last][n])
    lines = [f"| process | RSS minute {first} (MiB) | minute {mid} | minute {last} | growth |",
             "|---|---|---|---|---|"]
    for n in names:
        a, b, c = samples[first].get(n, 0), samples[mid].get(n, 0), samples[last][n]
        if c >= 50:
            lines.append(f"| {n} | {a:.0f} | {b:.0f} | {c:.0f} | "
                         f"{(c - a) / a * 100 if a else 0:+.1f} % |")
    ta, tc = sum(samples[first].values()), sum(samples[last].values())
    lines.append(f"| **all** | {ta:.0f} | {sum(samples[mid].values()):.0f} | {tc:.0f} | "
                 f"{(tc - ta) / ta * 100:+.1f} % |")
    totals = ", ".join(f"{m}: {sum(samples[m].values()):.0f}" for m in minutes)
    return "\n".join(lines), f"summed RSS (MiB) by minute: {totals}"


def run_soak(args: argparse.Namespace, stack: Stack) -> str:
    kills = [(k.split("@")[0], float(k.split("@")[1])) for k in args.kills.split(",") if k]
    soak, samples, events, stop = Soak(), {}, [], threading.Event()
    t0 = time.monotonic()
    thread = threading.Thread(target=chaos, args=(stack, soak, kills, samples, events, stop, t0),
                              daemon=True)
    thread.start()
    asyncio.run(soak_traffic(stack, args.minutes, args.clients, soak))
    stop.set()
    thread.join(timeout=600)
    states = settle(stack)
    acc = accounting(stack, soak)
    table, totals = memory_table(samples)
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(soak.counts.items()))
    during = ", ".join(f"{k}: {v}" for k, v in sorted(soak.outage_counts.items())) or "none"
    lines = [f"### {args.minutes:g} minutes of mixed traffic with kills, keys on, PostgreSQL\n",
             f"`bench/bench_reliability.py soak --minutes {args.minutes:g} --kills {args.kills}`, "
             f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, 2 cores, `configs/local.yaml`, "
             f"{args.clients} closed-loop clients (default mattes of photos of random size, "
             "shotguns over every model, HD jobs, 2 s 480p video jobs, /v1 jobs from an upload "
             "with a webhook; creates carry an Idempotency-Key and are retried with it).\n",
             "Kills:\n", *[f"- {e}" for e in events], "",
             f"Answers outside the outages: {answers}.\n",
             f"Answers while something was down (from the kill to 30 s after recovery): "
             f"{during}.\n",
             f"**Unexpected answers (outside the outages): {len(soak.unexpected)}**"
             + (": " + "; ".join(soak.unexpected[:10]) if soak.unexpected else "") + "\n",
             f"Jobs the clients were given: {acc['jobs']} ({dict(acc['by_kind'])}); in the "
             f"database {acc['db_jobs']}, by state {states}. **Lost (not completed): "
             f"{len(acc['lost'])}**; run more than once (a worker died under them): "
             f"{acc['rerun']}.\n",
             f"**Charged twice: {len(acc['double'])}**; completed but not charged: "
             f"{len(acc['uncharged'])}.\n",
             f"Webhooks: {acc['webhooks']} deliveries, job states {acc['webhook_states']}; "
             f"completed /v1 jobs without a `job_completed` delivery: "
             f"{len(acc['missing_hooks'])}; **delivered more than once: "
             f"{len(acc['dup_hooks'])}**"
             + (f" {acc['dup_hooks']}" if acc["dup_hooks"] else "") + ".\n",
             "Memory per process between the service's restart and the worker's kill:\n",
             table, "", totals]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fuzz")
    f.add_argument("--requests", type=int, default=100_000)
    f.add_argument("--concurrency", type=int, default=16)
    f.add_argument("--seed", type=int, default=31)
    s = sub.add_parser("soak")
    s.add_argument("--minutes", type=float, default=60)
    s.add_argument("--clients", type=int, default=2)
    s.add_argument("--kills", default="service@8,postgres@20,worker@54",
                   help="what@minute, comma-separated: service, postgres, worker")
    for q in (f, s):
        add_service_args(q)
        q.add_argument("--out", type=Path, help="markdown file whose section this run replaces")
        q.add_argument("--keep-logs", type=Path, default=Path(tempfile.gettempdir())
                       / "bgr-reliability-logs", help="where the service's logs are kept")
    args = p.parse_args()
    if not wait_for_quiet(args):
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="bgr-reliability-") as tmp:
        stack = start_stack(args, Path(tmp))
        try:
            report = run_fuzz(args, stack) if args.mode == "fuzz" else run_soak(args, stack)
        finally:
            stop_stack(stack, args.keep_logs)
    print(report)
    if args.out:
        begin = DOC_BEGIN.replace("start", f"{args.mode}:start")
        end = DOC_END.replace("end", f"{args.mode}:end")
        write_section(args.out, begin, end, "## Reliability with keys on and PostgreSQL "
                      "(issue 31)\n\n", f"{begin}\n{report}{end}")


if __name__ == "__main__":
    main()
