"""Temporary result links: shotgun results kept as files for `result_ttl_s`, served by the ingress.

Files live under `<data_dir>/results/<job_id>/<model_id>.<ext>`. On one machine that is a local
folder; with several ingress replicas on several nodes, `data_dir` must be shared storage so any
replica can serve any link. Expired files are refused at once and deleted by a sweep that runs
at most once a minute, when results are saved.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9_-]+)*\.(png|webp)")
_MAX_NAME = 160
_SWEEP_EVERY_S = 60.0


class ResultLinks:
    def __init__(self, root: Path, ttl_s: int) -> None:
        self.root = root
        self.ttl_s = ttl_s
        self._last_sweep = 0.0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def save(self, job_id: str, name: str, data: bytes) -> str:
        """Store one result; returns its path below the links route (`<job_id>/<name>`)."""
        if not _valid(job_id, name):
            raise ValueError(f"bad result name {job_id}/{name}")
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / name)
        self._maybe_sweep()
        return f"{job_id}/{name}"

    def find(self, job_id: str, name: str) -> tuple[Path, float] | None:
        """The file and its remaining lifetime in seconds, or None (unknown, expired, bad name)."""
        if not _valid(job_id, name):
            return None
        path = self.root / job_id / name
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        remaining = self.ttl_s - age
        return (path, remaining) if remaining > 0 else None

    def sweep(self) -> int:
        """Delete expired job folders; returns how many were removed."""
        removed = 0
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - self.ttl_s
        for folder in self.root.iterdir():
            try:
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:  # another replica swept it first
                continue
        return removed

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= _SWEEP_EVERY_S:
            self._last_sweep = now
            self.sweep()


def _valid(job_id: str, name: str) -> bool:
    return (len(name) <= _MAX_NAME and _JOB_ID.fullmatch(job_id) is not None
            and _NAME.fullmatch(name) is not None)
