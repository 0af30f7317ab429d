"""Baseline for bench/bench_matte.py: what `rembg s` does for a multipart upload, nothing more.

rembg's own server (`rembg/commands/s_command.py`, rembg 2.0.x) needs the `rembg[cli]` extra,
which cannot be installed beside ray here, so this reproduces its upload path:

* a FastAPI app (as rembg's), `POST /api/remove` with the multipart file field `file` and the
  form field `model`;
* `remove(content, session=session)` with rembg's defaults (no alpha matting, no post-processing),
  returning the PNG bytes as `image/png`;
* the call runs in a worker thread through `asyncer.asyncify` in rembg, i.e.
  `anyio.to_thread.run_sync` on anyio's default limiter (40 threads; rembg's `--threads` is unset
  by default). Here `anyio.to_thread.run_sync` directly, same thing without the asyncer dependency;
* one session, created once. rembg caches sessions per (model, extras) on first use; here it is
  created at start-up so that no request pays for loading it.

Not reproduced: the CORS middleware, the Gradio UI (`--no-ui`) and the URL-fetch GET endpoint.

    U2NET_HOME=<dir holding u2netp.onnx> .venv/bin/python bench/rembg_server.py --port 8078

rembg looks for `<U2NET_HOME>/u2netp.onnx` (its legacy flat layout) or
`<home>/models/u2netp/u2netp.onnx` and downloads only when neither exists.
"""

from __future__ import annotations

import argparse
from contextlib import asynccontextmanager
from typing import Annotated

import anyio.to_thread
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException
from starlette.responses import JSONResponse, Response

MODEL = "u2netp"
_state: dict = {}


@asynccontextmanager
async def lifespan(app: FastAPI):
    from rembg import new_session, remove  # slow first import (numba); done before serving

    _state["remove"] = remove
    _state["session"] = new_session(MODEL)
    yield
    _state.clear()


app = FastAPI(title="rembg baseline", lifespan=lifespan)


def _im_without_bg(content: bytes) -> Response:
    png = _state["remove"](content, session=_state["session"])
    return Response(png, media_type="image/png")


@app.post("/api/remove")
async def post_index(
    file: Annotated[bytes, File()],
    model: Annotated[str, Form()] = MODEL,
) -> Response:
    if model != MODEL:
        raise HTTPException(400, f"this baseline serves only {MODEL!r}")
    return await anyio.to_thread.run_sync(_im_without_bg, file)


@app.get("/health")
async def health() -> JSONResponse:
    ready = "session" in _state
    return JSONResponse({"status": "healthy" if ready else "starting"}, status_code=200 if ready else 503)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8078)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
