"""The gateway: validate, store, queue, answer 202. It never imports torch or the worker."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.deps import Services
from api.routes import health, jobs, models
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="segcam",
        version="1.0.0",
        summary="Asynchronous image segmentation with Grad-CAM explanations",
        description=(
            "Submit an image with `POST /v1/jobs` (answered `202` at once with a job ID), poll "
            "`GET /v1/jobs/{id}` until it is `succeeded` or `failed`, then download the mask, heatmap "
            'and overlay PNGs. Errors are JSON: `{"error": {"code", "message"}}`.'
        ),
    )
    app.state.services = Services.build(settings)
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(health.router)
    return app


app = create_app()
