"""The models in the store: names, versions, aliases, A/B traffic, labels, and who serves them."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import Services, services
from api.errors import ApiError, responses
from shared.model_store import ModelManifest, ModelNotFound
from shared.presence import live_workers
from shared.schemas import Method, ModelDetail, ModelInfo, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


def info(m: ModelManifest, workers: list[dict]) -> ModelInfo:
    return ModelInfo(
        name=m.name,
        version=m.version,
        architecture=m.architecture,
        labels=m.labels,
        input_size=m.input_size,
        target_layer=m.target_layer or "",
        sha256=m.sha256,
        workers=[w["name"] for w in workers if m.name in w.get("models", [])],
    )


@router.get("", response_model=ModelList, summary="Models in the store (default versions), labels, live workers")
def list_models(svc: Services = Depends(services)) -> ModelList:
    workers = live_workers(svc.redis, svc.keys)
    out = []
    for name in svc.models.names():
        try:
            out.append(info(svc.models.resolve(name), workers))
        except ModelNotFound:
            continue
    return ModelList(default=svc.settings.default_model, methods=list(Method), models=out)


@router.get(
    "/{name}",
    response_model=ModelDetail,
    summary="One model: every version, aliases, the A/B traffic table and how jobs were routed",
    responses=responses(404),
)
def get_model(name: str, svc: Services = Depends(services)) -> ModelDetail:
    try:
        versions = svc.models.versions(name)
        aliases = svc.models.aliases(name)
        table = svc.models.traffic(name)
        default = svc.models.default_version(name)
    except ModelNotFound as e:
        raise ApiError(404, "model_not_found", str(e)) from None
    workers = live_workers(svc.redis, svc.keys)
    counts = {k.decode(): int(v) for k, v in svc.redis.hgetall(svc.keys.variants(name)).items()}
    return ModelDetail(
        name=name,
        default_version=default,
        versions=[info(svc.models.manifest(name, v), workers) for v in versions],
        aliases=aliases,
        traffic=table,
        submitted_by_variant=counts,
        workers=[w["name"] for w in workers if name in w.get("models", [])],
    )
