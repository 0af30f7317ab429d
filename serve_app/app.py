"""The FastAPI application every route is declared on, the service version, and the one reader
of size-limited JSON request bodies."""

from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError

from pipelines.errors import InvalidRequest, PayloadTooLarge
from serve_app.errors import install_error_handlers, validation_error

Body = TypeVar("Body", bound=BaseModel)

try:
    VERSION = version("bgremove-serve")
except PackageNotFoundError:  # running from a source tree without install
    VERSION = "0.0.0"

app = FastAPI(
    title="bgremove",
    version=VERSION,
    description="Self-hosted background removal on Ray Serve. Image API v1 (`/image/*/v1`): "
    "cut-outs and background effects from a multipart upload in the field `image`. Shotgun API "
    "(`/remove-background`, `/upscale`, `/process`, `/log-selection`): JSON with a base64 "
    "`image` or an `image_url`; several models at once, every result returned to compare.",
)
install_error_handlers(app)


async def read_json(request: Request, model: type[Body], limit: int, too_large: PayloadTooLarge,
                    empty: bytes = b"") -> Body:
    """Read the body with a size limit (refused before it is all in memory), then validate it
    as `model`. An empty body reads as `empty` (e.g. b"{}" where every field is optional)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        return model.model_validate_json(body or empty)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise InvalidRequest("Request body is not valid JSON.", {"field": None}) from None
        raise validation_error(exc) from None
