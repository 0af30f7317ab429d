"""Temporary result links: shotgun results kept for `result_ttl_s`, served by the ingress.

Results are artifacts under `results/<job_id>/<model_id>.<ext>` in the service's artifact store,
so any ingress replica on any node serves any link (a local folder on one machine, the bucket on
a cluster). Expired results are refused at once and deleted by a sweep that runs at most once a
minute, when results are saved.
"""

from __future__ import annotations

import re
import time
from typing import BinaryIO

from serve_app.core.artifacts import ArtifactStore

_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9_-]+)*\.(png|webp)")
_MAX_NAME = 160
_SWEEP_EVERY_S = 60.0
PREFIX = "results/"


class ResultLinks:
    def __init__(self, store: ArtifactStore, ttl_s: int) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._last_sweep = 0.0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def save(self, job_id: str, name: str, data: bytes) -> str:
        """Store one result; returns its path below the links route (`<job_id>/<name>`)."""
        if not _valid(job_id, name):
            raise ValueError(f"bad result name {job_id}/{name}")
        self.store.put_bytes(f"{PREFIX}{job_id}/{name}", data)
        self._maybe_sweep()
        return f"{job_id}/{name}"

    def find(self, job_id: str, name: str) -> tuple[BinaryIO, float] | None:
        """The open result and its remaining lifetime in seconds, or None (unknown, expired,
        bad name). The caller closes it."""
        if not _valid(job_id, name):
            return None
        key = f"{PREFIX}{job_id}/{name}"
        try:
            remaining = self.ttl_s - (time.time() - self.store.modified(key))
            if remaining <= 0:
                return None
            return self.store.open(key), remaining
        except FileNotFoundError:
            return None

    def sweep(self) -> int:
        """Delete expired results; returns how many were removed."""
        return self.store.sweep(self.ttl_s, prefix=PREFIX)

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= _SWEEP_EVERY_S:
            self._last_sweep = now
            self.sweep()


def _valid(job_id: str, name: str) -> bool:
    return (len(name) <= _MAX_NAME and _JOB_ID.fullmatch(job_id) is not None
            and _NAME.fullmatch(name) is not None)
