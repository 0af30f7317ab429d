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


def try_it(folder: Path, env: dict[str, str]) -> None:
    """Run the README's "Try it" block in a fresh folder (with the repository's .venv beside
    it, as in a clone), then check what each command wrote."""
    import re

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Try it"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    folder.mkdir()
    (folder / ".venv").symlink_to(Path(sys.prefix))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    from PIL import Image
    for name in ("cutout.png", "blur.png", "color.png", "gradient.png", "shadow.png"):
        with Image.open(folder / name) as im:  # an image, not an error body
            assert im.size == (512, 512), name
    import json
    shot = json.loads((folder / "shotgun.json").read_text())
    assert shot["results"] and all(r["status"] == "success" for r in shot["results"])
    assert '"selection_id"' in done.stdout and "win" in done.stdout.lower()


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_make_run_stops_cleanly(how, real_models, tmp_path):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.fail(f"port {PORT} is taken: stop the service running there first")
    venv = Path(sys.prefix)
    log = tmp_path / "make-run.log"
    # a person's shell: none of the settings another test's service set in this process
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGR_")}
    env.update(BGR_DATA_DIR=str(tmp_path / "data"), RAY_AUTH_MODE="disabled")
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
        if how == "sigterm":  # once: the README's "Try it" commands, as written
            try_it(tmp_path / "try-it", env)
        processes = psutil.Process(make.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in processes]
        assert any("raylet" in c for c in commands)  # Ray runs under it
        # ... without the dashboard's module processes (`--dashboard` brings them back)
        assert not any("ray-dashboard-" in c for c in commands), commands
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
        after = text[text.index("bgremove: stopping the service"):]
        assert "ray.kill" not in after and "failed" not in after, after  # a clean ending
        assert "HTTP API KEYS ARE OFF" in text and "Ray cluster's own" in text  # which is which
        assert "SIGTERM received" not in text  # no native stack trace from a killed Ray process
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
