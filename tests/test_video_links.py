"""GET /video/result with an output store that has public links (spec 000's `upload_link` form).

The Video API's result handler runs here on a real job store (SQLite) and a real artifact folder
that a plain web server publishes, as a CDN or bucket website would; the rest of the Video API
runs against the Ray app in test_video_api.py.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import threading
import urllib.request

import pytest

from serve_app.core.artifacts import LocalArtifactStore
from serve_app.core.job_params import JobParams
from serve_app.core.job_store import JobStore
from serve_app.core.settings import Settings
from serve_app.job_desk import JobDesk
from serve_app.routes.video import video_result


@pytest.fixture
def published(tmp_path):
    """An artifact folder served read-only over HTTP; yields (store, base URL)."""
    store = LocalArtifactStore(tmp_path / "artifacts")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "artifacts"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield store, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


class ResultHandler:
    """`video_result` with the services it uses: settings, the job store and desk."""

    def __init__(self, settings: Settings, jobs: JobStore, artifacts) -> None:
        self.settings, self.jobs, self.artifacts = settings, jobs, artifacts
        self.desk = JobDesk(settings, jobs, artifacts, worker=None)

    def video_result(self, job_id: str, request):
        return video_result(self, job_id, request)


def finished_video(jobs: JobStore, store, original_s: float) -> str:
    job, _ = jobs.create(api="video", kind="video", input_key="inputs/x/input", start=True,
                         params=JobParams(model_id="u2netp", output_format="webm",
                                          original_duration_s=original_s, max_duration_s=4.0))
    assert jobs.claim("w1", 30.0).job_id == job.job_id
    key = f"outputs/{job.job_id}/1.webm"
    store.put_bytes(key, b"\x1aE\xdf\xa3 processed video bytes")
    assert jobs.complete(job.job_id, "w1", key, "video/webm", 3600)
    return job.job_id


@pytest.mark.parametrize("original_s", [3.5, 5.2])
def test_upload_link_form_when_the_store_has_public_links(tmp_path, published, original_s):
    store, public = published
    jobs = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    handler = ResultHandler(Settings(artifacts_public_url=public, data_dir=tmp_path), jobs, store)
    job_id = finished_video(jobs, store, original_s)

    resp = asyncio.run(handler.video_result(job_id, None))
    body = json.loads(resp.body)
    assert resp.status_code == 200 and resp.media_type == "application/json"
    link = body.pop("upload_link")
    expected = {"message": "Video processing completed successfully", "uuid": job_id,
                "status": "success"}
    if original_s > 4.0:  # the trimmed variant's extra fields, exactly as spec 000 shows them
        expected |= {"warning": "Video was trimmed from 5.20s to 4.00s",
                     "original_duration": "5.20s", "processed_duration": "4.00s"}
    assert body == expected
    # the link really serves the output, and handing it out did not delete the file
    with urllib.request.urlopen(link, timeout=10) as r:
        assert r.read() == b"\x1aE\xdf\xa3 processed video bytes"
    assert json.loads(asyncio.run(handler.video_result(job_id, None)).body)["upload_link"] == link


def test_without_public_links_the_file_itself_is_returned(tmp_path, published):
    store, _ = published
    jobs = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    handler = ResultHandler(Settings(data_dir=tmp_path), jobs, store)
    resp = asyncio.run(handler.video_result(finished_video(jobs, store, 3.5), None))
    assert resp.status_code == 200 and resp.media_type == "video/webm"
