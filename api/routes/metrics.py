"""Prometheus metrics for the whole deployment, read from Redis (see shared/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from api.deps import Services, services
from shared import metrics
from shared.presence import live_workers

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics: jobs by outcome and model, queue depth, queue wait and service time, 429s",
    responses={200: {"content": {"text/plain": {}}}},
)
def prometheus(svc: Services = Depends(services)) -> PlainTextResponse:
    text = metrics.render(svc.redis, svc.keys, svc.models.names(), len(live_workers(svc.redis, svc.keys)))
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
