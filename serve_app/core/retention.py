"""Retention: outputs past their time and uploaded inputs older than the output TTL go."""

from __future__ import annotations

from serve_app.core.artifacts import ArtifactStore
from serve_app.core.job_store import JobStore


def sweep(store: JobStore, artifacts: ArtifactStore, retention_s: float) -> None:
    """Delete expired job outputs (and forget them) and stale uploads and job inputs."""
    for job_id in store.expired_outputs():
        key = store.drop_output(job_id)
        if key:
            artifacts.delete(key)
    artifacts.sweep(retention_s, prefix="uploads/")
    artifacts.sweep(retention_s, prefix="inputs/")
