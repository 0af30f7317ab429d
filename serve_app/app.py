"""The FastAPI application every route is declared on, and the service version."""

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from serve_app.errors import install_error_handlers

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
