"""`make run` as a person runs it: it serves configs/local.yaml, and Ctrl-C (SIGINT to the
foreground process group) or SIGTERM (to make) stops it within 10 s with no process left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import REPO

pytestmark = pytest.mark.serve
PORT = 8000  # configs/local.yaml


def _healthy() -> bool:
    try:
        r = httpx.get(f"http://127.0.0.1:{PORT}/health", timeout=2)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.json().get("status") in ("healthy", "degraded")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_make_run_stops_cleanly(how, real_models, tmp_path):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.fail(f"port {PORT} is taken: stop the service running there first")
    venv = Path(sys.prefix)
    log = tmp_path / "make-run.log"
    env = {**os.environ, "BGR_DATA_DIR": str(tmp_path / "data"), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "run", f"VENV={venv}", "RUN_EXTRAS=cpu,ai,ai-cpu,test,bench"], cwd=REPO,
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _healthy():
            assert make.poll() is None, f"make run exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not healthy in 300 s:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        processes = psutil.Process(make.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in processes)  # Ray runs under it
        stopped_at = time.monotonic()
        if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground process group
            os.killpg(make.pid, signal.SIGINT)
        else:
            make.send_signal(signal.SIGTERM)
        make.wait(10)
        _, alive = psutil.wait_procs(processes, timeout=max(0.1, stopped_at + 10 - time.monotonic()))
        left = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]  # zombies are dead
        assert not left, f"still running 10 s after {how}: {[p.cmdline()[:2] for p in left]}"
        assert not _healthy()
        text = log.read_text(errors="replace")
        assert "bgremove: service stopped." in text
        assert "SIGTERM received" not in text  # no native stack trace from a killed Ray process
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
