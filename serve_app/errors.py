"""The one place where errors become HTTP responses.

The hierarchy is `pipelines.errors.ServiceError` (domain errors) and `serve_app.core.errors`
(the service's); `HTTP_STATUS` gives each class its status and code, and this module renders
an error in the shape of the route family that was called:

- Image API v1 (spec 000), paths under /image/ and /video/: `{"message": ...}` with the error's
  own status code.
- HD image and video APIs (spec 000), paths under /image/hd/ and /video/: `{"detail": ...}`.
- Job workflow, uploads and downloads (specs 001/002), paths under /v1/ and /api/:
  `{"error": {"code", "message", "request_id"}}` with the error's own status code.
- Shotgun API (spec 003) and the service routes: `{"error": {"type", "message", "details"}}`,
  with the status code that spec gives each type (e.g. every bad parameter is a 400).
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.metrics import DEPENDENCY_ERRORS, ERRORS
from pipelines.errors import (
    DownloadError,
    ImageTooLarge,
    InferenceError,
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    MissingImage,
    ModelUnavailable,
    PayloadTooLarge,
    ServiceError,
)
from serve_app.core.dependencies import OutageLog, as_dependency_error
from serve_app.core.errors import (
    DependencyUnavailable,
    InsufficientCredits,
    NotFound,
    ProcessingError,
    RangeNotSatisfiable,
    RateLimited,
    ServiceUnavailable,
    StateConflict,
    StorageUnavailable,
    Unauthorized,
)

log = logging.getLogger("ray.serve.bgremove")
OUTAGES = OutageLog()  # per process: one log line per dependency outage


def dependency_failure(exc: BaseException, prefix: str = "") -> ServiceError | None:
    """The 503/507 error for a failed dependency (recorded: logged once per outage, counted),
    or None when `exc` is something else."""
    mapped = as_dependency_error(exc, prefix)
    if mapped is not None and (mapped.details or {}).get("reason") != "busy":
        dependency = (mapped.details or {})["dependency"]
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        OUTAGES.failed(dependency, f"{type(exc).__name__}: {first_line}")
        DEPENDENCY_ERRORS.inc(1, {"dependency": dependency})
    return mapped

DEPENDENCY_ERRORS_TYPES = (DependencyUnavailable, StorageUnavailable)  # logged per outage

# Each error class's HTTP status and stable machine-readable code (the `code` of specs 001 and
# 002), most specific class first; subclasses not listed take their parent's.
HTTP_STATUS: list[tuple[type[ServiceError], int, str]] = [
    (InvalidParameter, 422, "invalid_request"),
    (InvalidRequest, 400, "invalid_request"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (ModelUnavailable, 503, "model_unavailable"),
    (ProcessingError, 422, "processing_error"),
    (DownloadError, 502, "download_failed"),
    (Unauthorized, 401, "invalid_api_key"),
    (InsufficientCredits, 402, "insufficient_credits"),
    (RateLimited, 429, "rate_limited"),
    (NotFound, 404, "not_found"),
    (RangeNotSatisfiable, 416, "range_not_satisfiable"),
    (StateConflict, 409, "conflict"),
    (ServiceUnavailable, 503, "service_unavailable"),
    (StorageUnavailable, 507, "insufficient_storage"),
    (InferenceError, 500, "internal_error"),
    (ServiceError, 500, "internal_error"),
]


def http_status(exc: ServiceError) -> tuple[int, str]:
    """The HTTP status and code of `exc`."""
    return next((status, code) for cls, status, code in HTTP_STATUS if isinstance(exc, cls))


# Spec 003's error types, most specific class first, with the status each type has there.
_SHOTGUN_TYPES: list[tuple[type[ServiceError], str, int]] = [
    (MissingImage, "missing_image", 400),
    (InvalidImage, "invalid_format", 400),
    (ImageTooLarge, "image_too_large", 413),
    (PayloadTooLarge, "image_too_large", 413),
    (ProcessingError, "processing_error", 422),
    (InvalidRequest, "validation_error", 400),
    (Unauthorized, "authentication_error", 401),
    (InsufficientCredits, "insufficient_credits", 402),
    (RateLimited, "rate_limited", 429),
    (ModelUnavailable, "service_unavailable", 503),
    (ServiceUnavailable, "service_unavailable", 503),
    (StorageUnavailable, "insufficient_storage", 507),
    (ServiceError, "internal_error", 500),
]
_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed"}


class BodyTooLarge(StarletteHTTPException):
    """Raised while a request body is read past its route's cap (`serve_app.app`). An
    HTTPException so that FastAPI's form parsing passes it on; rendered as `error`."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(status_code=http_status(error)[0], detail=error.message)
        self.error = error


def route_path(scope) -> str:
    """The path below the app's route prefix (Serve keeps the prefix in `path` and puts it in
    `root_path`): what the route families are told apart by."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def _family(request: Request) -> str:
    path = route_path(request.scope)
    if path.startswith(("/image/hd/", "/video/")):
        return "detail"
    if path.startswith("/image/"):
        return "message"
    if path.startswith(("/v1/", "/api/")):
        return "code"
    return "type"


def new_request_id(sent: str | None) -> str:
    """The X-Request-ID the request came with (Serve's proxy sets one), else a new one."""
    if sent and 0 < len(sent) <= 200 and sent.isprintable():
        return sent
    return f"req_{uuid.uuid4().hex}"


def request_id(request: Request) -> str:
    """The request's id (set by `serve_app.platform` for HTTP requests; made here otherwise)."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = new_request_id(request.headers.get("x-request-id"))
    return rid


def render(request: Request, exc: ServiceError) -> JSONResponse:
    response = _render(request, exc)
    ERRORS.inc(1, {"code": http_status(exc)[1], "status": str(response.status_code),
                   "family": _family(request)})
    retry = (exc.details or {}).get("retry_after_s")
    if retry is not None:  # 429 rate_limited, 503 busy
        response.headers["Retry-After"] = str(int(retry))
    return response


def _render(request: Request, exc: ServiceError) -> JSONResponse:
    family = _family(request)
    own_status, code = http_status(exc)
    if family == "message":
        return JSONResponse({"message": exc.message}, status_code=own_status)
    if family == "detail":  # spec 000's HD endpoints document 400s, not 422s
        status = 400 if isinstance(exc, InvalidParameter) else own_status
        return JSONResponse({"detail": exc.message}, status_code=status)
    if family == "code":
        body = {"error": {"code": code, "message": exc.message,
                          "request_id": request_id(request)}}
        # spec 002 knows no 422: a bad field is a 400 invalid_request there
        status = 400 if isinstance(exc, InvalidParameter) else own_status
        return JSONResponse(body, status_code=status)
    error_type, status = next((t, s) for cls, t, s in _SHOTGUN_TYPES if isinstance(exc, cls))
    body = {"error": {"type": error_type, "message": exc.message, "details": exc.details or {}}}
    return JSONResponse(body, status_code=status)


_UNION_TAGS = {"str", "bytes", "int", "float", "bool", "list", "dict", "none"}


def _field(loc: tuple) -> str:
    """Dotted field path without request sections or pydantic's union-branch tags."""
    parts = [str(p) for p in loc if p not in ("body", "query", "form")]
    parts = [p for p in parts if p not in _UNION_TAGS and "[" not in p]
    return ".".join(parts)


def _describe_validation(errors: list[dict]) -> str:
    parts = []
    for err in errors:
        loc = _field(err.get("loc", ()))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "Invalid request data: " + "; ".join(parts)


def _details(errors: list[dict]) -> dict[str, Any]:
    """`{"field", "received"}` of the first error (spec 003's example), never echoing images."""
    first = errors[0] if errors else {}
    field = _field(first.get("loc", ())) or None
    details: dict[str, Any] = {"field": field}
    received = first.get("input")
    if field not in ("image", None) and isinstance(received, (int, float, bool, str)):
        if isinstance(received, str):
            received = received[:200]
        elif isinstance(received, float) and not math.isfinite(received):
            received = str(received)  # NaN and Infinity parse but cannot be written as JSON
        details["received"] = received
    if len(errors) > 1:
        details["errors"] = [{"field": _field(e.get("loc", ())), "message": e.get("msg")}
                             for e in errors[:20]]
    return details


def validation_error(exc: ValidationError) -> InvalidParameter:
    errors = exc.errors()
    return InvalidParameter(_describe_validation(errors), _details(errors))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if http_status(exc)[0] >= 500 and not isinstance(exc, DEPENDENCY_ERRORS_TYPES):
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return render(request, InvalidParameter(_describe_validation(errors), _details(errors)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, BodyTooLarge):
            return render(request, exc.error)
        family = _family(request)
        ERRORS.inc(1, {"code": _HTTP_TYPES.get(exc.status_code, "http_error"),
                       "status": str(exc.status_code), "family": family})
        if family in ("message", "detail"):
            return JSONResponse({family: str(exc.detail)}, status_code=exc.status_code)
        if family == "code":
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code,
                                                                     "invalid_request")
            body = {"error": {"code": code, "message": str(exc.detail),
                              "request_id": request_id(request)}}
            return JSONResponse(body, status_code=exc.status_code)
        error_type = _HTTP_TYPES.get(exc.status_code, "validation_error")
        body = {"error": {"type": error_type, "message": str(exc.detail), "details": {}}}
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        mapped = dependency_failure(exc)
        if mapped is not None:  # an outage, not a bug: no stack trace, one log line
            return render(request, mapped)
        log.exception("%s %s: unexpected error", request.method, request.url.path)
        return render(request, ServiceError("Internal Server Error"))
