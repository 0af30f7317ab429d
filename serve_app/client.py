"""A small Python client for the service's HTTP API (what `bgremove remove|shotgun|video` use).

    from serve_app.client import Client
    c = Client("http://localhost:8000", api_key="bgr_...")   # or $BGR_URL / $BGR_API_KEY
    png = c.remove("photo.jpg", effect="blur", blur_strength=25)
    rows = c.shotgun("photo.jpg", models=["all"])["results"]
    webm = c.video("clip.mp4", on_progress=lambda done, total: ...)

Every call retries what the service says is temporary: 429 and 503 after their `Retry-After`,
connection failures with exponential backoff (at most `retries` times); any other error raises
`ApiError` with the status and the service's error body.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

Source = bytes | str | Path
RETRY_STATUSES = (429, 503)


class ApiError(Exception):
    def __init__(self, status: int, body: object) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


def _read(source: Source) -> tuple[str, bytes]:
    if isinstance(source, bytes):
        return "image", source
    path = Path(source)
    return path.name, path.read_bytes()


class Client:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 120.0, retries: int = 5, max_wait_s: float = 60.0) -> None:
        self.base_url = (base_url or os.environ.get("BGR_URL") or "http://localhost:8000")
        key = api_key or os.environ.get("BGR_API_KEY")
        self.retries, self.max_wait_s = retries, max_wait_s
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                 headers={"X-Api-Key": key} if key else {})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    # ---- transport ------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One call, retried while the service says "later" (429/503) or cannot be reached."""
        for attempt in range(self.retries + 1):
            try:
                resp = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                time.sleep(min(self.max_wait_s, 0.5 * 2 ** attempt))
                continue
            if resp.status_code in RETRY_STATUSES and attempt < self.retries:
                time.sleep(min(self.max_wait_s, _retry_after(resp, attempt)))
                continue
            if resp.status_code >= 400:
                try:
                    body = resp.json()
                except ValueError:
                    body = resp.text
                raise ApiError(resp.status_code, body)
            return resp
        raise AssertionError("unreachable")

    # ---- operations -----------------------------------------------------------------------
    def remove(self, image: Source, effect: str = "matte", **options) -> bytes:
        """`/image/{effect}/v1`: the PNG (matte, blur, color, gradient, shadow; options are the
        endpoint's form fields, e.g. `blur_strength=25`, `model="u2netp"`)."""
        name, data = _read(image)
        form = {k: str(v) for k, v in options.items() if v is not None}
        return self.request("POST", f"/image/{effect}/v1", data=form,
                            files={"image": (name, data)}).content

    def shotgun(self, image: Source, models: list[str] | None = None,
                output_format: str = "png") -> dict:
        """`/remove-background`: every selected model's cut-out (base64), time and cost."""
        _, data = _read(image)
        body = {"image": base64.b64encode(data).decode("ascii"),
                "include_models": models or ["all"], "output_format": output_format}
        return self.request("POST", "/remove-background", json=body).json()

    def video(self, clip: Source, *, bg_color: str | None = None, bg_image_url: str | None = None,
              model: str | None = None, output_format: str | None = None,
              on_progress: Callable[[int, int], None] | None = None,
              poll_s: float = 1.0, timeout_s: float = 3600.0) -> bytes:
        """`/video/submit/v1`, then `/video/result/{uuid}` until done: the processed file."""
        name, data = _read(clip)
        form = {k: v for k, v in (("bg_color", bg_color), ("bg_image_url", bg_image_url),
                                  ("model", model), ("output_format", output_format)) if v}
        job = self.request("POST", "/video/submit/v1", data=form, files={"video": (name, data)},
                           headers=_idempotent()).json()

        def progress(body: dict) -> None:
            if on_progress is not None and "total_frames" in body:
                on_progress(body["current_frame"], body["total_frames"])

        return self._wait(f"/video/result/{job['uuid']}", progress, poll_s, timeout_s)

    def hd(self, image: Source, model: str | None = None, *,
           on_poll: Callable[[], None] | None = None, poll_s: float = 1.0,
           timeout_s: float = 3600.0, **options) -> bytes:
        """`/image/hd/submit/v1` (any size), then the result once it is done (`on_poll` is
        called at every "still processing" answer); `options` are the output options, e.g.
        `output="mask"`, `crop=True`, `format="webp"`."""
        name, data = _read(image)
        form = {k: str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in {"model": model, **options}.items() if v is not None}
        job = self.request("POST", "/image/hd/submit/v1", data=form,
                           files={"image": (name, data)}, headers=_idempotent()).json()
        return self._wait(f"/image/hd/result/{job['uuid']}",
                          lambda _body: on_poll() if on_poll else None, poll_s, timeout_s)

    def usage(self) -> dict:
        return self.request("GET", "/v1/usage").json()

    def _wait(self, path: str, on_pending: Callable[[dict], None], poll_s: float,
              timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        delay = poll_s
        while True:
            resp = self.request("GET", path)
            if resp.status_code != 202:
                return resp.content
            on_pending(resp.json())
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"{path} still processing after {timeout_s:g} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 10.0)  # poll with backoff


def _idempotent() -> dict[str, str]:
    """A fresh Idempotency-Key for one create: the retries of that one call send the same key,
    so a retry after a lost answer gets the job the first attempt made (no second job, no
    second charge)."""
    return {"Idempotency-Key": str(uuid.uuid4())}


def _retry_after(resp: httpx.Response, attempt: int) -> float:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "")))
    except ValueError:
        return 0.5 * 2 ** attempt
