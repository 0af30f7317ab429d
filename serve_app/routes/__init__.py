"""One router per feature of the HTTP API; `ROUTERS` is what the app includes, in order."""

from serve_app.routes import (
    backgrounds,
    downloads,
    hd,
    health,
    images,
    jobs,
    shotgun,
    studio,
    usage,
    video,
)

ROUTERS = [images.router, backgrounds.router, shotgun.router, hd.router, jobs.router,
           downloads.router, video.router, usage.router, health.router, studio.router]
