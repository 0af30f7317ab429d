"""When a dependency fails: the database (503 + Retry-After in each family's shape) and the
artifact storage (507), /health telling the truth, and jobs that survive a database outage.

The mapping is tested directly; the outage is tested on the real service (`serve run`) against
a real PostgreSQL server that the test stops in immediate mode (like a crash) and starts again,
with its artifacts on a small tmpfs that the test fills up.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from sqlalchemy import exc as sa_exc

from serve_app.core.dependencies import DependencyProbe, OutageLog, as_dependency_error
from serve_app.core.errors import DependencyUnavailable, StorageUnavailable
from serve_app.errors import http_status

from conftest import REPO, PostgresServer, disk_image, png_bytes, tiny_catalog

# ---- the mapping ----------------------------------------------------------------------------


def _operational() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_database_errors_become_503_with_retry_after():
    err = as_dependency_error(_operational(), "Failed to submit image: ")
    assert isinstance(err, DependencyUnavailable) and http_status(err) == (503, "service_unavailable")
    assert err.message.startswith("Failed to submit image: the job database cannot be reached")
    assert err.details == {"dependency": "database", "retry_after_s": 5}
    try:  # found through the exception chain too
        try:
            raise _operational()
        except sa_exc.OperationalError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert isinstance(as_dependency_error(outer), DependencyUnavailable)


def test_sqlite_lock_contention_is_busy_not_an_outage(tmp_path):
    """A real "database is locked" (another connection holds the write lock past the busy
    timeout) is a 503 saying busy with Retry-After 1, and is not logged or counted as an
    outage; a database that cannot be reached still is."""
    import sqlalchemy as sa

    from serve_app.errors import OUTAGES, dependency_failure

    engine = sa.create_engine(f"sqlite:///{tmp_path}/db.sqlite",
                              connect_args={"timeout": 0.1})
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    holder = engine.connect()
    holder.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sa_exc.OperationalError) as locked, engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    finally:
        holder.rollback()
        holder.close()
    assert "locked" in str(locked.value)
    err = dependency_failure(locked.value, "Failed to submit image: ")
    assert isinstance(err, DependencyUnavailable) and http_status(err)[0] == 503
    assert err.details == {"dependency": "database", "reason": "busy", "retry_after_s": 1}
    assert "busy" in err.message and "cannot be reached" not in err.message
    assert "database" not in OUTAGES.down()
    try:
        assert dependency_failure(_operational()) is not None
        assert "database" in OUTAGES.down()
    finally:
        OUTAGES.recovered("database")


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "full"), (errno.EDQUOT, "full"),
                                          (errno.EROFS, "not_writable"),
                                          (errno.EACCES, "not_writable")])
def test_storage_errors_become_507(code, reason):
    err = as_dependency_error(OSError(code, os.strerror(code)))
    assert isinstance(err, StorageUnavailable) and http_status(err) == (507, "insufficient_storage")
    assert err.details == {"dependency": "storage", "reason": reason}
    assert "nothing was stored" in err.message


def test_other_errors_stay_bugs():
    assert as_dependency_error(ValueError("bad")) is None
    assert as_dependency_error(OSError(errno.ENOENT, "missing")) is None
    assert as_dependency_error(sa_exc.IntegrityError("INSERT", {}, Exception("dup"))) is None


def test_an_outage_is_logged_once_and_its_end_once(caplog):
    outages = OutageLog()
    logger = logging.getLogger("ray.serve.bgremove")
    logger.addHandler(caplog.handler)
    try:
        assert outages.failed("database", "refused") is True
        assert outages.failed("database", "refused") is False
        assert outages.failed("database", "timeout") is False
        outages.recovered("database")
        outages.recovered("database")
    finally:
        logger.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in dict.fromkeys(caplog.records)]  # one handler, maybe twice
    assert lines == ["dependency database unavailable: refused (logged once per outage)",
                     "dependency database available again"]


def test_probe_caches_its_answer_and_never_raises():
    calls = []

    def check():
        calls.append(1)
        raise _operational()

    probe = DependencyProbe(check, "unavailable", ttl_s=60)
    first, second = probe.check(), probe.check()
    assert not first.ok and first is second and len(calls) == 1
    assert first.status == "unavailable" and first.latency_ms is not None
    assert "cannot be reached" in first.detail


# ---- the real service against a real PostgreSQL server that goes away ------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory):
    """A 4 MB filesystem for the artifacts (skips where this machine cannot mount one)."""
    path = tmp_path_factory.mktemp("tmpfs")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}): needs root")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model, tmpfs):
    """`serve run` of a small app on PostgreSQL, artifacts on the tmpfs; (base url, server)."""
    tmp = tmp_path_factory.mktemp("deps")
    pg = PostgresServer().start()
    port = _free_port()
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "applications": [{"name": "deps", "route_prefix": "/",
                          "import_path": "serve_app.builder:build_app",
                          "args": {"default_model": "tiny", "models": ["tiny"],
                                   "pools": {"light": {"ray_actor_options": {"num_cpus": 0.25}}},
                                   "ingress": {"ray_actor_options": {"num_cpus": 0.25}},
                                   "jobs": {"ray_actor_options": {"num_cpus": 0.25}}}}],
    }
    (tmp / "serve.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "BGR_DATABASE_URL": pg.url, "BGR_DATA_DIR": str(tmp / "data"),
           "BGR_ARTIFACTS_URL": f"file://{tmpfs}", "BGR_AUTH_ENABLED": "false",
           "BGR_CATALOG_PATH": str(tiny_catalog(tmp)), "BGR_MODELS_DIR": str(tiny_model.parent),
           "BGR_JOB_POLL_S": "0.2", "BGR_JOB_LEASE_S": "3",
           "BGR_MIN_FREE_STORAGE_BYTES": str(1024 * 1024), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    env.pop("BGR_EXTRA_MODELS_DIR", None)
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(os.sys.executable).with_name("serve")), "run",
                             str(tmp / "serve.yaml")], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp / "serve.log").read_text()[-3000:]
            time.sleep(1)
        yield base, pg
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        pg.remove()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _assert_503(resp: httpx.Response, family: str) -> str:
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "5"
    body = resp.json()
    if family == "code":
        assert set(body["error"]) == {"code", "message", "request_id"}
        assert body["error"]["code"] == "service_unavailable"
        message = body["error"]["message"]
    else:
        assert set(body) == {"detail"}
        message = body["detail"]
    assert "database cannot be reached" in message and "Traceback" not in message
    return message


def _wait(fn, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def _clip() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.roll(disk_image(), i, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()



@pytest.mark.serve
def test_database_outage_answers_503_and_jobs_survive(service, tmpfs):
    base, pg = service
    client = httpx.Client(base_url=base, timeout=30)
    healthy = client.get("/health").json()
    assert healthy["dependencies"]["database"]["status"] == "ok"
    assert healthy["dependencies"]["storage"]["status"] == "ok"
    image = png_bytes(disk_image(160, 120))
    hd = [client.post("/image/hd/submit/v1", files={"image": ("a.png", image, "image/png")})
          .json()["uuid"] for _ in range(3)]
    clip = client.post("/video/submit/v1", files={"video": ("c.mp4", _clip(), "video/mp4")})
    assert clip.status_code == 202, clip.text
    job = client.post("/v1/jobs", json={"upload_id": client.post("/api/upload", files={
        "file": ("a.png", image, "image/png")}).json()["upload_id"]}).json()
    pg.stop("immediate")  # jobs are queued or running
    before = _files(tmpfs)

    _assert_503(client.get(f"/v1/jobs/{job['job_id']}"), "code")
    _assert_503(client.post("/v1/jobs", json={"image_url": "http://127.0.0.1:9/x.png"}), "code")
    _assert_503(client.post("/api/upload", files={"file": ("b.png", image, "image/png")}),
                "code")
    msg = _assert_503(client.post("/video/submit/v1",
                                  files={"video": ("c.mp4", _clip(), "video/mp4")}), "detail")
    assert msg.startswith("Failed to submit video: ")
    msg = _assert_503(client.post("/image/hd/submit/v1",
                                  files={"image": ("b.png", image, "image/png")}), "detail")
    assert msg.startswith("Failed to submit image: ")
    time.sleep(2.1)  # the probe's cache: its last answer was from before the outage
    down = client.get("/health")
    assert down.status_code == 503 and down.json()["status"] == "unhealthy"
    assert down.json()["dependencies"]["database"]["status"] == "unavailable"
    assert client.get("/health/live").status_code == 200  # liveness stays up
    assert _files(tmpfs) <= before  # refused requests left nothing behind

    pg.start()
    _wait(lambda: client.get("/health").status_code == 200, 30)
    assert client.post("/v1/jobs", json={"image_url": "http://127.0.0.1:9/x.png",
                                         "auto_start": False}).status_code == 201
    for uuid in hd:  # every job submitted before the outage completes
        done = _wait(lambda u=uuid: (r := client.get(f"/image/hd/result/{u}")).status_code
                     != 202 and r)
        assert done.status_code == 200 and done.headers["content-type"] == "image/png"
    video = _wait(lambda: (r := client.get(f"/video/result/{clip.json()['uuid']}")).status_code
                  != 202 and r)
    assert video.status_code == 200 and video.headers["content-type"] == "video/webm"
    final = _wait(lambda: (r := client.get(f"/v1/jobs/{job['job_id']}").json())["status"]
                  in ("completed", "failed") and r)
    assert final["status"] == "completed", final


@pytest.mark.serve
def test_full_storage_answers_507_and_leaves_nothing_behind(service, tmpfs):
    base, _ = service
    client = httpx.Client(base_url=base, timeout=30)
    rng = np.random.default_rng(0)
    noise = png_bytes(Image.fromarray(rng.integers(0, 255, (1100, 1500, 3), dtype=np.uint8)))
    assert len(noise) > 4 * 1024 * 1024  # incompressible: more than the whole tmpfs
    before = _files(tmpfs)

    resp = client.post("/api/upload", files={"file": ("n.png", noise, "image/png")})
    assert resp.status_code == 507, resp.text
    assert resp.json()["error"]["code"] == "insufficient_storage"
    assert "storage is full" in resp.json()["error"]["message"]
    resp = client.post("/image/hd/submit/v1", files={"image": ("n.png", noise, "image/png")})
    assert resp.status_code == 507 and resp.json()["detail"].startswith(
        "Failed to submit image: storage is full")
    resp = client.post("/video/submit/v1",
                       files={"video": ("v.mp4", _clip() + noise, "video/mp4")})
    assert resp.status_code == 507 and resp.json()["detail"].startswith(
        "Failed to submit video: storage is full")
    assert _files(tmpfs) == before  # no partial file, no temp file

    filler = tmpfs / "filler"  # below BGR_MIN_FREE_STORAGE_BYTES: /health says so
    filler.write_bytes(b"\0" * (os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
                                - 512 * 1024))
    try:
        time.sleep(2.1)  # the probe's cache
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["dependencies"]["storage"]["status"] == "full"
    finally:
        filler.unlink()
    time.sleep(2.1)
    assert client.get("/health").status_code == 200
