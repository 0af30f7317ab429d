"""The domain errors of image, video and model work: what went wrong, in words and details.

They know nothing of HTTP. `ServiceError` is the root of every error the project reports on
purpose; the service's own errors (credits, keys, jobs, outages) extend it in
`serve_app.core.errors`, and `serve_app.errors` alone decides each class's HTTP status, code
and body shape. Instances take only a message and details, so they pickle across Ray actors.
"""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Machine-readable context (e.g. {"field": "image", "received": "image/gif"}); route
        # families whose error shape has a details object show it.
        self.details = details

    def __reduce__(self):  # keep `details` when the error crosses a Ray actor boundary
        return (type(self), (self.message, self.details))


class InvalidRequest(ServiceError):
    """The caller's input cannot be used as given."""


class InvalidImage(InvalidRequest):
    """Not an image, empty, truncated or otherwise undecodable."""


class ImageTooLarge(InvalidRequest):
    """More pixels than the operation accepts (the regular endpoints point to the HD one)."""


class InvalidParameter(InvalidRequest, ValueError):
    """A parameter with a bad value (also a ValueError, so pydantic validators can raise it)."""


class UnknownModel(InvalidRequest):
    """A model id that is not in the catalog."""


class MissingImage(InvalidRequest):
    """Neither an image nor an image URL was given."""


class UnsupportedFormat(InvalidImage):
    """A decodable image in a format the operation does not accept."""


class FetchError(InvalidRequest):
    """A URL that may not be fetched (scheme, private address) or could not be."""


class PayloadTooLarge(ServiceError):
    """More bytes than the operation accepts."""


class ModelUnavailable(ServiceError):
    """A catalog model that is not being served (weights missing, or not enabled)."""


class ModelFileMissing(ModelUnavailable):
    """A model's weights file is not on disk; raised at load time, never downloaded then."""


class InferenceError(ServiceError):
    """A model failed on an input it accepted."""


class DownloadError(ServiceError):
    """`models pull` could not fetch or verify a weights file from any source."""
