"""Liveness (the process answers) and readiness (Redis answers and a worker is alive)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.deps import Services, services
from shared.presence import live_workers
from shared.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The API process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Redis is reachable and at least one worker is alive",
            responses={503: {"model": Health}})  # fmt: skip
def readyz(svc: Services = Depends(services)) -> JSONResponse:
    try:
        svc.redis.ping()
        workers = [w["name"] for w in live_workers(svc.redis, svc.keys)]
        ok_redis = True
    except redis.RedisError:
        ok_redis, workers = False, []
    ready = ok_redis and bool(workers)
    body = Health(status="ready" if ready else "not_ready", redis=ok_redis, workers=workers)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
