"""The FastAPI application every route is declared on, the service version, the one reader of
size-limited JSON request bodies, and the body-size cap every request is read under."""

from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.errors import InvalidRequest, PayloadTooLarge, ServiceError
from serve_app.core.errors import FileTooLarge
from serve_app.core.settings import Settings, get_settings
from serve_app.errors import (
    BodyTooLarge,
    install_error_handlers,
    render,
    route_path,
    validation_error,
)
from serve_app.platform import PlatformMiddleware
from serve_app.uploads import FORM_OVERHEAD_BYTES

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
_JSON_BODIES: dict[str, type[BaseModel]] = {}


def json_body(model: type[BaseModel], required: bool = True) -> dict:
    """`openapi_extra` for a route that reads its JSON body itself (`read_json`, for the size
    limit and the family's error shapes): the body's model in the OpenAPI document."""
    _JSON_BODIES[model.__name__] = model
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": required,
                            "content": {"application/json": {"schema": ref}}}}


_fastapi_openapi = app.openapi


def _openapi() -> dict:
    """FastAPI's document, plus the models of the bodies the routes read themselves."""
    cached = app.openapi_schema is not None
    schema = _fastapi_openapi()
    if not cached:
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, model in _JSON_BODIES.items():
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for def_name, definition in body.pop("$defs", {}).items():
                components.setdefault(def_name, definition)
            components[name] = body
    return schema


app.openapi = _openapi  # type: ignore[method-assign]

def body_limit(path: str, s: Settings) -> tuple[int, ServiceError]:
    """The most a request to `path` may send, and the error (in its family's terms) beyond."""
    if path.startswith("/video/") or path.startswith("/api/"):  # specs 000 (video) and 002
        return s.upload_max_bytes + FORM_OVERHEAD_BYTES, FileTooLarge(
            "File too large", {"limit_bytes": s.upload_max_bytes})
    if path.startswith("/image/"):  # the HD and regular image endpoints' own 413 text
        limit = s.hd_max_upload_bytes if path.startswith("/image/hd/") else s.max_upload_bytes
        return limit + FORM_OVERHEAD_BYTES, PayloadTooLarge(
            f"Image file is larger than {limit} bytes.", {"limit_bytes": limit})
    limit = s.shotgun_max_bytes * 4 // 3 + FORM_OVERHEAD_BYTES  # base64 image plus fields
    return limit, PayloadTooLarge(f"Request body is larger than {limit} bytes.",
                                  {"limit_bytes": limit})


class BodyLimitMiddleware:
    """Caps every request body by its route family's limit while it is read, so no handler,
    form parser or spool file ever takes in more (a declared Content-Length over the limit is
    refused before a byte is read). The handlers still check their exact per-field limits."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, error = body_limit(route_path(scope), get_settings())
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:  # refused unread, the app not called
            await render(Request(scope, receive), error)(scope, receive, send)
            return
        received = 0
        body_done = responding = False

        async def limited() -> Message:
            nonlocal received, body_done
            if body_done or responding:  # e.g. a streaming response waiting for a disconnect
                return await receive()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(error)
                body_done = not message.get("more_body", False)
            return message

        async def watch(message: Message) -> None:
            nonlocal responding
            responding = responding or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited, watch)


app.add_middleware(BodyLimitMiddleware)
app.add_middleware(PlatformMiddleware)  # added last = runs first: request id, key, rate limit


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
