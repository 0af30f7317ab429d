"""`bgremove serve CONFIG`: `serve run CONFIG` in the foreground, stopped cleanly by Ctrl-C,
SIGTERM or SIGHUP, with no Ray process left behind (what `make run` uses). The local Ray
cluster starts without Ray's dashboard unless `--dashboard` is given (`serve_app.serve_run`).

`serve run` alone is awkward to stop: started in the background of a script its SIGINT is
ignored (shells do that to background jobs), and SIGTERM kills it without shutting Serve down,
so Ray's own processes stay up. Here `serve run` runs in a session of its own; this process
catches the signals, asks it to stop the way Ctrl-C would (SIGINT: Serve drains and removes the
replicas, then the local Ray cluster stops) and, after a grace period of 5 s, kills whatever is
left in that session. Jobs cut short are durable: their leases expire and the next start resumes
them. Once a stop was asked for, the notices Ray prints about its own shutdown (a Serve
controller task "failed ... killed by `ray.kill`") are dropped: they are how a stop looks from
inside Ray, not errors, and the last line says the service stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SHUTDOWN_NOISE = re.compile(r"killed by `ray\.kill`|graceful_shutdown failed|"
                            r"listen_for_change failed")


def _relay(stream, stop: threading.Event) -> None:
    """Copy the child's output to ours, line by line, without Ray's shutdown notices once a
    stop was asked for."""
    for line in iter(stream.readline, ""):
        if stop.is_set() and SHUTDOWN_NOISE.search(line):
            continue
        sys.stdout.write(line)
        sys.stdout.flush()


def _kill_session(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_service(config: str, grace_s: float = 5.0, dashboard: bool = False,
                host: str | None = None) -> int:
    """Run `serve run config` until it exits or a stop signal arrives; returns an exit code
    (0 after a requested stop)."""
    command = [sys.executable, "-m", "serve_app.serve_run", config,
               *(["--dashboard"] if dashboard else []), *(["--host", host] if host else [])]
    child = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace")
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(child.stdout, stop), daemon=True)
    relay.start()
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
    relay.join(2)  # the rest of what the child printed, before the last line
    if stop.is_set():
        print("bgremove: service stopped.", file=sys.stderr, flush=True)
        return 0
    return code
