"""The one place where errors become HTTP responses.

The hierarchy is `pipelines.errors.ServiceError`; this module renders it in the shape of the
route family that was called. Image API v1 (spec 000) uses `{"message": ...}`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.errors import InvalidParameter, ServiceError

log = logging.getLogger("bgremove")


def _render(request: Request, status: int, message: str) -> JSONResponse:
    # Single route family so far (spec 000). Later families pick their shape from the path here.
    return JSONResponse({"message": message}, status_code=status)


def _describe_validation(errors: list[dict]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "form"))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "Invalid request data: " + "; ".join(parts)


def validation_error(exc: ValidationError) -> InvalidParameter:
    return InvalidParameter(_describe_validation(exc.errors()))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return _render(request, exc.status_code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _render(request, 422, _describe_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _render(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s: unexpected error", request.method, request.url.path)
        return _render(request, 500, "Internal Server Error")
