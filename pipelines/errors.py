"""The project's one error hierarchy.

Every error the service reports on purpose is a `ServiceError`. Each class carries its HTTP status
and a stable machine-readable `code` as class attributes and takes only a message, so instances
pickle cleanly across Ray actors. `serve_app.errors` renders them in each route family's shape;
nothing else maps exceptions to HTTP.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Machine-readable context (e.g. {"field": "image", "received": "image/gif"}); route
        # families whose error shape has a details object show it.
        self.details = details

    def __reduce__(self):  # keep `details` when the error crosses a Ray actor boundary
        return (type(self), (self.message, self.details))


class InvalidRequest(ServiceError):
    status_code = 400
    code = "invalid_request"


class InvalidImage(InvalidRequest):
    """Not an image, empty, truncated or otherwise undecodable."""


class ImageTooLarge(InvalidRequest):
    """More pixels than the endpoint accepts (the regular endpoints point to the HD one)."""


class InvalidParameter(InvalidRequest, ValueError):
    """A form or query parameter with a bad value (also a ValueError, so pydantic validators
    can raise it)."""

    status_code = 422


class UnknownModel(InvalidRequest):
    """A model id that is not in the catalog."""


class MissingImage(InvalidRequest):
    """Neither an image nor an image URL was given."""


class UnsupportedFormat(InvalidImage):
    """A decodable image in a format the endpoint does not accept."""


class FetchError(InvalidRequest):
    """An `image_url` that may not be fetched (scheme, private address) or could not be."""


class UnknownJob(InvalidRequest):
    """A job id the service has no record of."""


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class ModelUnavailable(ServiceError):
    """A catalog model that is not being served (weights missing, or not enabled)."""

    status_code = 503
    code = "model_unavailable"


class ModelFileMissing(ModelUnavailable):
    """A model's weights file is not on disk; raised at load time, never downloaded then."""


class InferenceError(ServiceError):
    status_code = 500
    code = "internal_error"


class ProcessingError(ServiceError):
    """Every model of a shotgun request failed."""

    status_code = 422
    code = "processing_error"


class DownloadError(ServiceError):
    """`models pull` could not fetch or verify a weights file from any source."""

    status_code = 502
    code = "download_failed"


class FileTooLarge(InvalidRequest):
    """An upload over the size limit. Spec 002 answers 400 "File too large" (not 413) on
    `/api/upload`; details carry `limit_bytes`."""


class InvalidFileType(InvalidRequest):
    """An upload whose content (sniffed from its first bytes, not the client's header) is not an
    accepted type; details carry `received` and `allowed`."""


class Unauthorized(ServiceError):
    """No API key, or one that is unknown or revoked."""

    status_code = 401
    code = "invalid_api_key"


class InsufficientCredits(ServiceError):
    """The key's credit balance cannot cover the operation (refused before any work)."""

    status_code = 402
    code = "insufficient_credits"


class RateLimited(ServiceError):
    """Too many requests in the key's window, or too many of its jobs at once; details carry
    `retry_after_s`, sent as the Retry-After header too."""

    status_code = 429
    code = "rate_limited"


class NotFound(ServiceError):
    """A job, upload or output that does not exist (or no longer does)."""

    status_code = 404
    code = "not_found"


class RangeNotSatisfiable(ServiceError):
    """A `Range` header that selects no byte of the file."""

    status_code = 416
    code = "range_not_satisfiable"


class StateConflict(ServiceError):
    """An operation the job's current state does not allow (e.g. starting a started job)."""

    status_code = 409
    code = "conflict"


class ServiceUnavailable(ServiceError):
    """A capability this deployment does not run (e.g. async jobs with no worker), or one that
    is overloaded right now (details carry `retry_after_s`, sent as Retry-After)."""

    status_code = 503
    code = "service_unavailable"


class DependencyUnavailable(ServiceUnavailable):
    """A dependency of the service (the job database) cannot be reached right now; a retry
    after `retry_after_s` may succeed. Not the service's bug: never a 500."""


class StorageUnavailable(ServiceError):
    """The artifact storage is full or not writable (ENOSPC, EDQUOT, EROFS, EACCES)."""

    status_code = 507
    code = "insufficient_storage"
