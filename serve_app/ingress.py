"""HTTP ingress: the one deployment that holds every model deployment's handle.

Its replica builds the `Services` the routers work with (`serve_app.routes`, one router per
feature) and registers them; requests are decoded and checked in the routers, masks computed by
each model's own deployment (`DeploymentHandle`), effects composited here at full resolution.
The methods below are the typed handle API for Python callers of `serve.get_app_handle(...)`;
each calls the same function its route does.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.app import app
from serve_app.config import IngressSetup
from serve_app.core.admission import Admission
from serve_app.core.settings import apply_log_level, get_settings
from serve_app.gateway import ModelGateway
from serve_app.routes import ROUTERS, images, jobs, shotgun
from serve_app.schemas import (
    CreateJobRequest,
    ImageJob,
    ImageResult,
    JobView,
    ProcessRequest,
    ProcessResponse,
    RemoveBackgroundRequest,
    RemoveBackgroundResponse,
    SelectionRequest,
    SelectionResponse,
    SelectionStats,
    UpscaleRequest,
    UpscaleResponse,
)
from serve_app.services import Services, register

log = logging.getLogger("ray.serve.bgremove")
for router in ROUTERS:
    app.include_router(router)


@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        catalog: list[dict[str, Any]],
        missing: dict[str, str],
        setup: dict[str, Any],
        worker: DeploymentHandle | None = None,
        prompter: DeploymentHandle | None = None,
        generator: DeploymentHandle | None = None,
        detector: DeploymentHandle | None = None,
    ) -> None:
        settings = get_settings()
        apply_log_level(settings)
        if not settings.auth_enabled:
            log.warning("!" * 78 + "\n  HTTP API KEYS ARE OFF (BGR_AUTH_ENABLED=false): every "
                        "client may call every endpoint,\n  with no rate limits and no "
                        "credits. Only for one user on one machine.\n  (Ray's \"Token "
                        "authentication is enabled\" notice is about the Ray cluster's own\n"
                        "  token, which stays on; it does not protect this HTTP API.)\n"
                        + "!" * 78)
        ingress_setup = IngressSetup.model_validate(setup)
        gateway = ModelGateway(models, {m["id"]: m for m in catalog}, missing,
                               ingress_setup.default_model, prompter, generator,
                               withheld=ingress_setup.withheld,
                               auto_models=ingress_setup.auto_models,
                               auto_compare=ingress_setup.auto.compare, detector=detector,
                               admission=Admission(ingress_setup.model_slots,
                                                   settings.max_queue_wait_s))
        self.services = Services.build(settings, ingress_setup, gateway, worker)
        register(self.services)

    # ---- the typed handle API ---------------------------------------------------------------
    async def process(self, job: ImageJob) -> ImageResult:
        """Remove the background of `job.image` and apply `job.effect` (Image API v1)."""
        return await images.process(self.services, job)

    async def remove_background(self, req: RemoveBackgroundRequest, base_url: str | None = None,
                                owner: str | None = None) -> RemoveBackgroundResponse:
        """The shotgun: the selected models in parallel, every cut-out, time and cost."""
        return await shotgun.remove_background(self.services, req, base_url, owner)

    async def upscale(self, req: UpscaleRequest) -> UpscaleResponse:
        """Lanczos ×2/×4; transparency kept when `preserve_alpha`."""
        return await shotgun.upscale_image(self.services, req)

    async def remove_and_upscale(self, req: ProcessRequest,
                                 owner: str | None = None) -> ProcessResponse:
        """`/process`: the shotgun, then every cut-out upscaled."""
        return await shotgun.remove_and_upscale(self.services, req, owner)

    async def log_selection(self, req: SelectionRequest,
                            owner: str | None = None) -> SelectionResponse:
        """Record which model's result a person picked for a shotgun job."""
        return await shotgun.log_selection(self.services, req, owner)

    async def selection_stats(self, category: str | None = None) -> SelectionStats:
        """Win rate per model and image category."""
        return await shotgun.selection_stats(self.services, category)

    async def submit_job(self, req: CreateJobRequest, idempotency_key: str | None = None,
                         owner: str | None = None, max_active: int | None = None,
                         request: None = None) -> tuple[JobView, bool]:
        """Create a /v1/jobs job: its view, and False when the idempotency key had made it.
        (`request` is accepted for callers of earlier versions; Python callers have none.)"""
        return await jobs.submit_job(self.services, req, idempotency_key, owner, max_active)
