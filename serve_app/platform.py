"""What every HTTP request goes through before its route: a request id, the API key, the rate
limit. One pure ASGI middleware (so the headers it adds are on every response, errors included):

- `X-Request-ID`: Serve's HTTP proxy keeps the client's or makes one, puts it in the request's
  headers and echoes it on the response; it is taken from there into `request.state`, spec 002
  error bodies and log lines (outside Serve, a new `req_<hex>`).
- `X-Api-Key` (when `BGR_AUTH_ENABLED`, the default): a missing, unknown or revoked key is a
  401 in the route family's shape. Public: `/health`, the API docs, and the expiring,
  unguessable result links (`/results/...`), which browsers open without headers.
- Keys off (`BGR_AUTH_ENABLED=false`) means one user on one machine: only loopback clients are
  answered, anyone else gets a 401 saying so, unless `BGR_OPEN_WITHOUT_KEYS=true`.
- Backpressure: at most `BGR_MAX_INFLIGHT_REQUESTS` requests per ingress replica are worked on
  at once; beyond that the answer is an immediate 503 with `Retry-After: 1`, decided before
  the key is looked up, so shedding load costs no database access. A request takes its slot
  before the key is looked up, so a burst cannot pass the limit while lookups are awaited.
  `/health` is exempt.
- A key store that cannot answer (database locked or down) is a 503 with Retry-After too.
- Rate limit per key (`serve_app.core.keys`, counted in the database so all ingress replicas agree):
  `X-RateLimit-Limit/Remaining/Reset` on every authenticated response; over the limit 429
  `rate_limited` with `Retry-After`.

Routes read the caller from `request.state.api_key` (`caller_id`). Each request ends with one
log line on the `ray.serve.bgremove` logger (method, path, status, key name, duration; never the
key itself or any body): with the Serve config's `logging_config: {encoding: JSON}` these are
JSON records in the replica's log file, carrying Serve's request id, app and replica too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.errors import ServiceError
from serve_app.core.errors import RateLimited, ServiceUnavailable, Unauthorized
from serve_app.core.keys import ApiKey, KeyStore, hash_secret
from serve_app.core.settings import get_settings
from serve_app.errors import http_status, new_request_id, render, route_path

log = logging.getLogger("ray.serve.bgremove")
HEALTH_PATHS = frozenset({"/health", "/health/live"})
PUBLIC_PATHS = frozenset({"/health", "/health/live", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json", "/studio"})
PUBLIC_PREFIXES = ("/results/", "/studio/")  # the studio's page and assets; its calls use keys


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def from_this_machine(scope: Scope) -> bool:
    """Whether the ASGI client address is loopback (no address: no)."""
    client = scope.get("client")
    try:
        return client is not None and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:  # a host name, not an address
        return False


def caller(request: Request | None) -> ApiKey | None:
    """The caller's API key (None when auth is off, or for Python handle calls)."""
    return getattr(request.state, "api_key", None) if request is not None else None


def caller_id(request: Request | None) -> str | None:
    key = caller(request)
    return key.key_id if key is not None else None


def _log(scope: Scope, status: int, key: ApiKey | None, started: float) -> None:
    log.info("%s %s %s", scope["method"], scope["path"], status, extra={
        "method": scope["method"], "path": scope["path"], "status": status,
        "key_name": key.name if key else None,
        "duration_ms": round((time.perf_counter() - started) * 1e3, 1)})


class PlatformMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._keys: KeyStore | None = None
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._inflight = 0  # requests past the checks below, not yet answered

    @property
    def keys(self) -> KeyStore:
        if self._keys is None:
            self._keys = KeyStore.from_settings(get_settings())
        return self._keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        state = scope.setdefault("state", {})
        state["request_id"] = new_request_id(headers.get("x-request-id"))
        extra: dict[str, str] = {}
        settings = get_settings()
        path = route_path(scope)
        # Shedding first: under overload a refusal must cost no database access.
        if path not in HEALTH_PATHS and 0 < settings.max_inflight_requests <= self._inflight:
            await self._refuse(scope, receive, send, ServiceUnavailable(
                f"Server busy: {self._inflight} requests in progress on this replica; retry "
                "shortly.", {"retry_after_s": 1}), extra)
            _log(scope, 503, None, started)
            return
        self._inflight += 1  # the slot is taken before anything is awaited
        try:
            refusal = await self._admit(scope, path, headers, state, extra, settings)
            if refusal is not None:
                await self._refuse(scope, receive, send, refusal, extra)
                _log(scope, http_status(refusal)[0], state.get("api_key"), started)
                return
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
            status = [500]

            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                    names = {k for k, _ in raw}
                    kept = [(k, v) for k, v in message.get("headers", [])
                            if k.lower() not in names]
                    message = {**message, "headers": kept + raw}
                await send(message)

            try:
                await self.app(scope, receive, send_with_headers)
            finally:
                _log(scope, status[0], state.get("api_key"), started)
        finally:
            self._inflight -= 1

    async def _admit(self, scope: Scope, path: str, headers: dict[str, str], state: dict,
                     extra: dict[str, str], settings) -> ServiceError | None:
        """Who may call: the error to answer with, or None."""
        if is_public(path):
            return None
        if not settings.auth_enabled:
            if settings.open_without_keys or from_this_machine(scope):
                return None
            return Unauthorized("API keys are off on this service, so it answers only its own "
                                "machine. Its operator can create keys (bgremove keys create) "
                                "or open it (BGR_OPEN_WITHOUT_KEYS=true).")
        try:
            return await self._check_key(headers, state, extra, settings)
        except SQLAlchemyError:  # e.g. "database is locked" past the busy timeout
            log.exception("key store unavailable")
            return ServiceUnavailable("The key store is unavailable; retry shortly.",
                                      {"retry_after_s": 1})

    async def _check_key(self, headers: dict[str, str], state: dict, extra: dict[str, str],
                         settings) -> ServiceError | None:
        """Authenticate and count the request; the error to answer with, if any."""
        secret = headers.get("x-api-key", "").strip()
        key = await self._authenticate(secret, settings.auth_cache_s) if secret else None
        if key is None:
            return Unauthorized("Invalid API key." if secret else
                                "Missing API key: send it in the X-Api-Key header.")
        state["api_key"] = key
        limit = settings.rate_limit_per_min if key.rate_limit_per_min is None \
            else key.rate_limit_per_min
        window = await asyncio.to_thread(self.keys.hit, key.key_id, limit)
        extra |= window.headers()
        if window.allowed:
            return None
        wait = window.retry_after()
        return RateLimited(f"Rate limit of {limit} requests per minute exceeded; retry in "
                           f"{wait} s.", {"limit": limit, "retry_after_s": wait})

    async def _authenticate(self, secret: str, cache_s: float) -> ApiKey | None:
        digest, t = hash_secret(secret), time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > t:
            return hit[1]
        key = await asyncio.to_thread(self.keys.authenticate, secret)
        if cache_s > 0:
            if len(self._cache) > 10_000:  # many wrong keys: start over rather than grow
                self._cache.clear()
            self._cache[digest] = (t + cache_s, key)
        return key

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, error: ServiceError,
                      headers: dict[str, str]) -> None:
        response = render(Request(scope, receive), error)
        response.headers.update(headers)
        await response(scope, receive, send)
