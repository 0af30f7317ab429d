"""A throwaway PostgreSQL server on 127.0.0.1 for the tests and the reliability bench: the
machine's own server binaries (initdb, pg_ctl), a temp data folder, stopped, crashed (kill -9)
and started again on the same port and data."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def _postgres_bin_dir() -> Path | None:
    """Where initdb and pg_ctl live: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).parent] if found else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1 that a test can stop and start again.

    initdb refuses to run as root, so as root the server runs as `nobody` in a /tmp dir it owns.
    `start()` skips the test when the machine has no PostgreSQL server binaries.
    """

    def __init__(self) -> None:
        self.bindir = _postgres_bin_dir()
        if self.bindir is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.root = Path(tempfile.mkdtemp(prefix="bgr-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("nobody")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "nobody", "--"] if shutil.which("runuser") else [
                "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        self.data, self.log = self.root / "data", self.root / "server.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *cmd], cwd=self.root, capture_output=True,
                              text=True, timeout=60)

    def start(self) -> PostgresServer:
        psycopg = pytest.importorskip("psycopg")
        if not self.data.exists():
            res = self._run(str(self.bindir / "initdb"), "-D", str(self.data), "--auth=trust",
                            "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
            if res.returncode != 0:
                pytest.skip(f"initdb failed: {res.stderr.strip()[-500:]}")
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.root} -F")
        res = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                        "-o", opts, "-w", "-t", "20", "start")
        if res.returncode != 0:
            tail = self.log.read_text()[-500:] if self.log.exists() else res.stderr
            pytest.skip(f"PostgreSQL did not start: {tail.strip()}")
        self.running = True
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                                connect_timeout=2).close()
                return self
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    pytest.skip(f"PostgreSQL does not accept connections: {exc}")
                time.sleep(0.2)

    def stop(self, mode: str = "immediate") -> None:
        """`immediate`: like a crash or a pulled cable (no clean shutdown)."""
        if self.running:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop")
            self.running = False

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash or the OOM killer would (its backends notice and
        exit); `start()` afterwards recovers from the WAL like a restarted server."""
        pid_file = self.data / "postmaster.pid"
        if self.running and pid_file.is_file():
            pid = int(pid_file.read_text().split()[0])
            backends = _children(pid)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10  # its backends notice and exit: wait for them too
            while any(map(_alive, [pid, *backends])) and time.monotonic() < deadline:
                time.sleep(0.1)
            # A container whose init reaps no orphans keeps the dead postmaster as a zombie,
            # which PostgreSQL takes for a live one: drop its lock files, as an operator would.
            pid_file.unlink(missing_ok=True)
            for lock in self.root.glob(".s.PGSQL.*.lock"):  # the socket's lock names it too
                lock.unlink(missing_ok=True)
        self.running = False

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
