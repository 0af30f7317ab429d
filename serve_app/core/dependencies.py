"""What the service depends on, and how their failures look to clients: the job database and
the artifact storage.

`as_dependency_error` turns the exception a failed dependency raises (SQLAlchemy's connection
errors, `OSError` with ENOSPC/EROFS/...) into the service error clients get: 503 with
Retry-After for a database that cannot be reached (1 s and "busy" for SQLite's lock contention,
which is not an outage and is not logged as one) and for a bucket that cannot be reached or
refuses the credentials (`ArtifactStoreUnavailable`), 507 for storage that is full or not
writable; None for anything else (a real bug stays a 500). `OutageLog` says so once per outage,
not once per request. `DependencyProbe` answers /health cheaply (a cached round-trip).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from pipelines.errors import ServiceError
from serve_app.core.artifacts import ArtifactStore, ArtifactStoreUnavailable
from serve_app.core.db import ping
from serve_app.core.errors import DependencyUnavailable, StorageUnavailable

log = logging.getLogger("ray.serve.bgremove")

DATABASE_RETRY_AFTER_S = 5
STORAGE_RETRY_AFTER_S = 5
BUSY_RETRY_AFTER_S = 1
_STORAGE_FULL = {errno.ENOSPC, errno.EDQUOT}
_STORAGE_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _database_down(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError,
                            sa_exc.TimeoutError, sa_exc.DisconnectionError))


def database_busy(exc: BaseException) -> bool:
    """SQLite's lock contention ("database is locked" past the busy timeout): the database is
    there and answering, another process holds the write lock. Not an outage."""
    return any(isinstance(e, sa_exc.OperationalError) and "locked" in str(e.orig or "")
               for e in _chain(exc))


def as_dependency_error(exc: BaseException, prefix: str = "") -> ServiceError | None:
    """The client-facing error for a dependency failure anywhere in `exc`'s chain, or None.
    `prefix` starts the message (e.g. spec 000's "Failed to submit image: ")."""
    if database_busy(exc):
        return DependencyUnavailable(
            f"{prefix}the job database is busy (another writer holds its lock); retry in a "
            "second.", {"dependency": "database", "reason": "busy",
                        "retry_after_s": BUSY_RETRY_AFTER_S})
    for e in _chain(exc):
        if _database_down(e):
            return DependencyUnavailable(
                f"{prefix}the job database cannot be reached right now; retry in a few "
                "seconds.", {"dependency": "database", "retry_after_s": DATABASE_RETRY_AFTER_S})
        if isinstance(e, ArtifactStoreUnavailable):
            return DependencyUnavailable(
                f"{prefix}the artifact storage cannot be used right now ({e}); retry in a few "
                "seconds.", {"dependency": "storage", "reason": e.reason,
                             "retry_after_s": STORAGE_RETRY_AFTER_S})
        if isinstance(e, OSError) and e.errno in _STORAGE_FULL:
            return StorageUnavailable(f"{prefix}storage is full (no space left on device); "
                                      "nothing was stored.",
                                      {"dependency": "storage", "reason": "full"})
        if isinstance(e, OSError) and e.errno in _STORAGE_READ_ONLY:
            return StorageUnavailable(f"{prefix}storage is not writable "
                                      f"({e.strerror or 'permission denied'}); nothing was "
                                      "stored.", {"dependency": "storage",
                                                  "reason": "not_writable"})
    return None


class OutageLog:
    """One log line when a dependency starts failing (with the reason) and one when it is back,
    however many requests meet the outage in between."""

    def __init__(self) -> None:
        self._down: dict[str, str] = {}
        self._lock = threading.Lock()

    def failed(self, dependency: str, reason: str) -> bool:
        """Record a failure; True (and logged) when it starts an outage."""
        with self._lock:
            new = dependency not in self._down
            self._down[dependency] = reason
        if new:
            log.error("dependency %s unavailable: %s (logged once per outage)", dependency,
                      reason, extra={"dependency": dependency})
        return new

    def recovered(self, dependency: str) -> None:
        with self._lock:
            was = self._down.pop(dependency, None)
        if was is not None:
            log.warning("dependency %s available again", dependency,
                        extra={"dependency": dependency})

    def down(self) -> dict[str, str]:
        with self._lock:
            return dict(self._down)


@dataclass(frozen=True)
class Check:
    """One dependency's state for /health: `status` is "ok" or what fails (database:
    unavailable; storage: full, not_writable)."""

    status: str = "ok"
    detail: str | None = None
    latency_ms: float | None = None
    free_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def database_check(engine: Engine) -> Check:
    """One round-trip to the database (raises when it cannot be reached)."""
    ping(engine)
    return Check()


def storage_check(store: ArtifactStore, min_free_bytes: int) -> Check:
    """Free space and writability of a store that can tell (the local folder); a bucket: one
    round-trip (raises ArtifactStoreUnavailable when it cannot be used)."""
    reachable = getattr(store, "reachable", None)
    if reachable is not None:
        reachable()
        return Check()
    space = getattr(store, "space", None)
    if space is None:
        return Check()
    free, writable = space()
    if not writable:
        return Check("not_writable", "the artifact folder is not writable", free_bytes=free)
    if free < min_free_bytes:
        return Check("full", f"{free:,} bytes free, below BGR_MIN_FREE_STORAGE_BYTES "
                             f"({min_free_bytes:,})", free_bytes=free)
    return Check(free_bytes=free)


class DependencyProbe:
    """A cached check: at most one real `fn()` per `ttl_s`, so /health under a load balancer's
    polling costs one round-trip a second. An exception from `fn` is reported with
    `failed_status`, never raised."""

    def __init__(self, fn: Callable[[], Check], failed_status: str, ttl_s: float = 2.0) -> None:
        self._fn, self._failed, self._ttl = fn, failed_status, ttl_s
        self._last: tuple[float, Check] | None = None
        self._lock = threading.Lock()

    def check(self) -> Check:
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self._ttl:
                return self._last[1]
        started = time.monotonic()
        try:
            result = self._fn()
        except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
            mapped = as_dependency_error(exc)
            # an outage (a database or bucket that cannot be reached) reads "unavailable"
            status = "unavailable" if isinstance(mapped, DependencyUnavailable) else self._failed
            result = Check(status, mapped.message if mapped
                           else f"{type(exc).__name__}: {exc}"[:300])
        result = replace(result, latency_ms=round((time.monotonic() - started) * 1e3, 1))
        with self._lock:
            self._last = (time.monotonic(), result)
        return result
