"""The gateway: validate, store, queue, answer 202. It never imports torch or the worker."""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from api import errors
from api.deps import Services
from api.events import EventHub
from api.limits import BodySizeLimit
from api.routes import health, jobs, metrics, models, web
from api.warmup import warm_up
from shared.settings import Settings, get_settings

DESCRIPTION = (
    "Submit an image with `POST /v1/jobs` (answered `202` at once with a job ID), poll "
    "`GET /v1/jobs/{id}` until it is `succeeded` or `failed`, then download the mask, heatmap "
    'and overlay PNGs. Every error is JSON: `{"error": {"code": ..., "message": ...}}`.'
)


def _openapi(app: FastAPI):
    """FastAPI documents 422 as its own validation shape; segcam answers with ErrorResponse."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description,
                         routes=app.routes)  # fmt: skip
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path in schema["paths"].values():
        for op in path.values():
            resp = op.get("responses", {})
            if "422" in resp:
                resp["422"] = {"description": "Invalid request", "content": {"application/json": {"schema": ref}}}
            resp.setdefault(
                "503", {"description": "Redis unreachable", "content": {"application/json": {"schema": ref}}}
            )
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.events = EventHub(settings)
        await warm_up(app, app.state.services, app.state.events)  # first-request costs paid here, not by a user
        gc.collect()
        gc.freeze()  # start-up objects live as long as the process: full collections skip them
        yield
        await app.state.events.close()

    app = FastAPI(
        title="segcam",
        version="1.0.0",
        summary="Asynchronous image segmentation with Grad-CAM explanations",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.services = Services.build(settings)
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(web.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:  # added last, so outermost: a 413 from the size limit carries the headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed", "WWW-Authenticate"],
            max_age=600,
        )
    app.openapi = lambda: _openapi(app)
    return app


app = create_app()
