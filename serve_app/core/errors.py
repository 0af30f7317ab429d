"""The service's own errors, beyond the domain's (`pipelines.errors`): keys and credits, jobs
and uploads, overload and outages. HTTP statuses and codes are given in `serve_app.errors`."""

from __future__ import annotations

from pipelines.errors import InvalidRequest, ServiceError


class UnknownJob(InvalidRequest):
    """A shotgun job id the service has no record of."""


class ProcessingError(ServiceError):
    """Every model of a shotgun request failed."""


class FileTooLarge(InvalidRequest):
    """An upload over the size limit. Spec 002 answers 400 "File too large" (not 413) on
    `/api/upload`; details carry `limit_bytes`."""


class InvalidFileType(InvalidRequest):
    """An upload whose content (sniffed from its first bytes, not the client's header) is not an
    accepted type; details carry `received` and `allowed`."""


class Unauthorized(ServiceError):
    """No API key, or one that is unknown or revoked."""


class InsufficientCredits(ServiceError):
    """The key's credit balance cannot cover the operation (refused before any work)."""


class RateLimited(ServiceError):
    """Too many requests in the key's window, or too many of its jobs at once; details carry
    `retry_after_s`, sent as the Retry-After header too."""


class NotFound(ServiceError):
    """A job, upload or output that does not exist (or no longer does)."""


class RangeNotSatisfiable(ServiceError):
    """A `Range` header that selects no byte of the file."""


class StateConflict(ServiceError):
    """An operation the job's current state does not allow (e.g. starting a started job)."""


class ServiceUnavailable(ServiceError):
    """A capability this deployment does not run (e.g. async jobs with no worker), or one that
    is overloaded right now (details carry `retry_after_s`, sent as Retry-After)."""


class DependencyUnavailable(ServiceUnavailable):
    """A dependency of the service (the job database) cannot be reached right now; a retry
    after `retry_after_s` may succeed. Not the service's bug: never a 500."""


class StorageUnavailable(ServiceError):
    """The artifact storage is full or not writable (ENOSPC, EDQUOT, EROFS, EACCES)."""
