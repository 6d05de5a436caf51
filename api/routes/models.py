"""The models the workers serve, with their labels, so clients can pick a class by name."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import Services, services
from shared.model_store import ModelNotFound
from shared.presence import live_workers
from shared.schemas import Method, ModelInfo, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList, summary="Models in the store, their labels and the live workers serving them")
def list_models(svc: Services = Depends(services)) -> ModelList:
    workers = live_workers(svc.redis, svc.keys)
    out = []
    for name in svc.models.names():
        try:
            m = svc.models.resolve(name)
        except ModelNotFound:
            continue
        out.append(
            ModelInfo(
                name=m.name,
                version=m.version,
                architecture=m.architecture,
                labels=m.labels,
                input_size=m.input_size,
                target_layer=m.target_layer or "",
                sha256=m.sha256,
                workers=[w["name"] for w in workers if m.name in w.get("models", [])],
            )
        )
    return ModelList(default=svc.settings.default_model, methods=list(Method), models=out)
