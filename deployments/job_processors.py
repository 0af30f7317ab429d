"""What a job worker does with one job: an HD/`/v1` image or a video, from input to stored output.

Pure of scheduling: the runner (`deployments.job_runner`) claims the job, holds its lease and
records the outcome; a processor fetches the input, calls the model deployments through a
`ModelClient`, renders with `pipelines.render` and stores the output under a key of this attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import ray
from ray.serve.handle import DeploymentHandle

from deployments.model_client import ModelClient
from pipelines import video
from pipelines.auto import AUTO, categorize_clip
from pipelines.catalog import ModelSpec
from pipelines.errors import FetchError, InvalidRequest, ModelUnavailable, ServiceError
from pipelines.fetch import FetchPolicy, fetch_url
from pipelines.images import decode_image
from pipelines.render import render_image_job, render_video
from pipelines.sam import prompt_model_missing
from pipelines.temporal import MaskSmoother
from serve_app.core.artifacts import ArtifactStore
from serve_app.core.job_params import JobPrompt
from serve_app.core.job_store import Job
from serve_app.core.keys import KeyStore
from serve_app.core.settings import Settings

VIDEO_MEDIA_TYPES = {"webm": "video/webm", "mp4": "video/mp4", "mov": "video/quicktime"}
# (frames done, total or None): called on every frame of a video; raises to stop there
Progress = Callable[[int, int | None], None]


@dataclasses.dataclass(frozen=True)
class Output:
    """A processed job: its output's key and media type, the units it is charged for (1 image,
    or the seconds of video processed) and what to report with it (e.g. text_prompt terms)."""

    key: str
    media_type: str
    units: float
    report: dict[str, Any] | None


def output_key(job: Job, fmt: str) -> str:
    """Where one run of a job stores its output: unique per run (attempt number plus a random
    tag), since a job handed back to the queue keeps its attempt number."""
    return f"jobs/{job.job_id}/attempt-{job.attempts}-{uuid.uuid4().hex[:8]}/output.{fmt}"


class JobProcessors:
    def __init__(self, settings: Settings, client: ModelClient, specs: dict[str, ModelSpec],
                 artifacts: ArtifactStore, keys: KeyStore, fetch_policy: FetchPolicy,
                 model_timeout_s: float, prompter: DeploymentHandle | None = None,
                 text_segmenter: DeploymentHandle | None = None) -> None:
        self.settings, self.client, self.specs = settings, client, specs
        self.artifacts, self.keys, self.fetch_policy = artifacts, keys, fetch_policy
        self.model_timeout_s = model_timeout_s
        self.prompter = prompter  # click/box prompts of /v1/jobs (None: not installed)
        self.text_segmenter = text_segmenter  # text_prompt terms (None: not configured)

    def process(self, job: Job, progress: Progress) -> Output:
        if job.kind == "video":
            return self._video(job, progress)
        if job.kind == "image":
            return self._image(job)
        raise ServiceError(f"No processor for {job.kind} jobs in this deployment.")

    # ---- models -----------------------------------------------------------------------------
    def _segment(self, model_id: str, rgb: np.ndarray) -> Callable[[], np.ndarray]:
        """Start `model_id`'s mask of `rgb`; returns the wait for the full-size mask. A wait
        that fails or times out cancels the replica's request (`deployments.model_client`)."""
        call = self.client.segment(model_id, rgb)

        def wait() -> np.ndarray:
            return call.wait(self.model_timeout_s)[0]
        wait.cancel = call.response.cancel  # type: ignore[attr-defined]  # job failed: drop it
        return wait

    def _prompted(self, ref, prompt: JobPrompt, mask: np.ndarray) -> np.ndarray:
        if self.prompter is None:
            raise prompt_model_missing()
        return self.prompter.segment.remote(ref, prompt.prompt(), mask, prompt.mode).result(
            timeout_s=self.model_timeout_s)

    def _text_select(self, ref, terms: list[str], mask: np.ndarray) -> tuple[np.ndarray, dict]:
        if self.text_segmenter is None:
            raise ModelUnavailable("text_prompt needs the open-vocabulary segmentation backend, "
                                   "which is not being served by this deployment.")
        selected, matches = self.text_segmenter.select.remote(ref, terms, mask).result(
            timeout_s=self.model_timeout_s)
        if not matches["matched"]:
            raise InvalidRequest(f"None of the text_prompt terms was found in the image: "
                                 f"{', '.join(terms)}.")
        return selected, matches

    def _fetch(self, url: str, max_bytes: int, sink: BinaryIO | None = None) -> bytes:
        """The URL's body (or, with `sink`, written there as it arrives)."""
        policy = dataclasses.replace(self.fetch_policy, max_bytes=max_bytes)
        try:
            return run_async(fetch_url(url, policy, sink=sink))
        except FetchError as exc:  # the reason, not what internal names resolve to
            reason = (exc.details or {}).get("reason", "failed")
            raise FetchError(f"The input URL could not be fetched ({reason}).") from None

    # ---- images -----------------------------------------------------------------------------
    def _image(self, job: Job) -> Output:
        if job.input_key is not None:
            with self.artifacts.open(job.input_key) as f:
                data = f.read()
        else:
            data = self._fetch(job.input_url, self.fetch_policy.max_bytes)
        params = job.params
        report: dict = {}

        def segment(rgb: np.ndarray) -> np.ndarray:
            if params.model_id == AUTO:
                choice = self.client.auto_sync(rgb, self.model_timeout_s)
                report["model_id"], report["subject"], mask = (choice.model_id, choice.subject,
                                                               choice.mask)
            else:
                mask = self._segment(params.model_id, rgb)()
            ref = ray.put(rgb) if params.text_prompt or params.prompt is not None else None
            if params.text_prompt:
                mask, report["text_prompt"] = self._text_select(ref, params.text_prompt, mask)
            if params.prompt is not None:
                mask = self._prompted(ref, params.prompt, mask)
            return mask

        fmt = params.output_format
        output, media_type = render_image_job(
            data, segment, max_pixels=self.settings.hd_max_pixels, output_format=fmt,
            background=params.background, composition=params.composition,
            options=params.options,
        )
        # One key per run: a worker that lost its lease (or handed the job back) never
        # touches the new owner's file.
        key = output_key(job, fmt)
        self.artifacts.put_bytes(key, output)
        return Output(key, media_type, 1.0, report or None)

    # ---- videos -----------------------------------------------------------------------------
    def _auto_video(self, path: str, max_duration_s: float | None) -> tuple[str, str]:
        """One model for the whole clip, from 5 frames spread over what will be processed:
        the recurrent person model (RVM) or a person model for a person, else a light model."""
        frames = video.sample_frames(path, 5, max_duration_s)
        category, _ = categorize_clip(
            frames, lambda rgb: self.client.look(rgb, self.model_timeout_s))
        height, width = frames[0].shape[:2] if frames else (1, 1)
        return self.client.policy().choose(category, width, height, video=True)[0], category

    def _video(self, job: Job, progress: Progress) -> Output:
        """Stream the video through the model deployment (frames `video_window` at a time, so
        concurrent jobs' frames share the model's batches and every replica can take frames)."""
        params, settings = job.params, self.settings
        fmt = params.output_format
        report: dict = {}
        background_image = None
        if params.bg_image_key:
            with self.artifacts.open(params.bg_image_key) as f:
                background_image = decode_image(f.read(), settings.hd_max_pixels).rgb
        with tempfile.TemporaryDirectory(prefix="bgr-video-") as tmp:
            src = self.artifacts.local_path(job.input_key) if job.input_key else None
            if src is None:  # a URL, or a store without local files: work on a local copy
                src = Path(tmp) / "input"
                if job.input_key:
                    with self.artifacts.open(job.input_key) as f, open(src, "wb") as out:
                        shutil.copyfileobj(f, out)
                else:  # streamed to disk: a 500 MB clip never sits in memory
                    with open(src, "wb") as out:
                        self._fetch(job.input_url, settings.upload_max_bytes, sink=out)
            self._require_video_credits(job, str(src))
            dst = Path(tmp) / f"output.{fmt}"
            model_id = params.model_id
            if model_id == AUTO:
                model_id, report["subject"] = self._auto_video(str(src), params.max_duration_s)
                report["model_id"] = model_id
            recurrent = self.specs[model_id].recurrent if model_id in self.specs else False

            def submit_chunk(rgbs: list[np.ndarray], warmup: int) -> Callable[[], list]:
                call = self.client.sequence(model_id, rgbs, warmup)

                def wait() -> list:
                    return call.wait(self.model_timeout_s)
                wait.cancel = call.response.cancel  # type: ignore[attr-defined]
                return wait

            result = render_video(
                str(src), str(dst), lambda rgb: self._segment(model_id, rgb), output_format=fmt,
                background=params.background, background_image=background_image,
                composition=params.composition, max_duration_s=params.max_duration_s,
                window=settings.video_window,
                # a recurrent model is steady by itself: no smoother after it
                smoother=MaskSmoother() if settings.video_smoothing and not recurrent else None,
                decontaminate=settings.video_edge_decontamination,
                on_progress=progress,
                submit_chunk=submit_chunk if recurrent else None,
                chunk_frames=settings.video_chunk_frames,
                chunk_warmup=settings.video_chunk_warmup, max_pixels=settings.video_max_pixels)
            key = output_key(job, fmt)
            with open(dst, "rb") as f, self.artifacts.writer(key) as out:
                shutil.copyfileobj(f, out)
        return Output(key, VIDEO_MEDIA_TYPES[fmt], round(result.processed_duration_s, 2),
                      report or None)

    def _require_video_credits(self, job: Job, path: str) -> None:
        """Before any frame is processed: the owner's balance covers the seconds that will be
        (the clip's length up to the job's cap; the cap itself when the file states no length)."""
        if job.owner is None or self.settings.price_video_second <= 0:
            return
        info = video.probe(path)
        cap = job.params.max_duration_s
        seconds = (video.processed_duration(info.duration_s, cap) if info.duration_known
                   else cap or 0.0)
        self.keys.require(job.owner, round(seconds * self.settings.price_video_second, 4),
                          f"this clip ({seconds:.2f} s)")


def run_async(coro):
    """Run a coroutine from a worker thread on a private loop. Unlike `asyncio.run`, closing
    does not wait for the loop's executor (a slow DNS lookup cannot outlast the fetch timeout)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
