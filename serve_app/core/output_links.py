"""The link a completed job's output is downloaded from (`output_url` in /v1/jobs and in
webhooks): the service's own `/api/download/<id>`, or, with a bucket store and
`s3_presigned_downloads`, a presigned GET of the object that expires with the output, so large
downloads skip the ingress."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from serve_app.core.artifacts import ArtifactStore

if TYPE_CHECKING:
    from serve_app.core.job_store import Job
    from serve_app.core.settings import Settings


def output_link(settings: Settings, artifacts: ArtifactStore, job: Job) -> str:
    if settings.s3_presigned_downloads and job.output_key and job.output_expires_at:
        left = (job.output_expires_at - datetime.now(UTC)).total_seconds()
        if left >= 1:
            url = artifacts.presigned_url(
                job.output_key, int(left), job.output_media_type,
                f"{job.job_id}.{job.params.output_format}")
            if url is not None:
                return url
    base = (settings.public_base_url or "").rstrip("/")
    return f"{base}/api/download/{job.job_id}"
