"""`bgremove serve CONFIG`: `serve run CONFIG` in the foreground, stopped cleanly by Ctrl-C,
SIGTERM or SIGHUP, with no Ray process left behind (what `make run` uses).

`serve run` alone is awkward to stop: started in the background of a script its SIGINT is
ignored (shells do that to background jobs), and SIGTERM kills it without shutting Serve down,
so Ray's own processes stay up. Here `serve run` runs in a session of its own; this process
catches the signals, asks it to stop the way Ctrl-C would (SIGINT: Serve drains and removes the
replicas, then the local Ray cluster stops) and, after a grace period of 5 s, kills whatever is
left in that session. Jobs cut short are durable: their leases expire and the next start resumes
them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _kill_session(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_service(config: str, grace_s: float = 5.0) -> int:
    """Run `serve run config` until it exits or a stop signal arrives; returns an exit code
    (0 after a requested stop)."""
    serve = Path(sys.executable).with_name("serve")
    command = [str(serve) if serve.exists() else "serve", "run", config]
    child = subprocess.Popen(command, start_new_session=True)
    stop = threading.Event()
    for sig in STOP_SIGNALS:  # installed even where the parent shell ignored SIGINT
        signal.signal(sig, lambda *_: stop.set())
    while child.poll() is None and not stop.wait(0.2):
        pass
    if stop.is_set() and child.poll() is None:
        print("bgremove: stopping the service (Serve, then the local Ray cluster) ...",
              file=sys.stderr, flush=True)
        child.send_signal(signal.SIGINT)  # what Ctrl-C does: serve.shutdown(), ray.shutdown()
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Ray's processes (GCS, raylet, workers) live in the child's session: whatever is left
    # now goes at once (SIGKILL: no half-handled signal, no native stack traces).
    _kill_session(child.pid, signal.SIGKILL)
    code = child.wait()
    if stop.is_set():
        print("bgremove: service stopped.", file=sys.stderr, flush=True)
        return 0
    return code
