"""Everything a submission must pass before it is queued, in the order cheapest first.

A job is queued only when its model, method, class and image are all known good: a bad
request is answered in the request (4xx, naming the problem), never discovered later by
a worker.
"""

from __future__ import annotations

from api.deps import Services
from api.errors import ApiError
from shared.imaging import ImageRejected, inspect
from shared.model_store import ModelManifest, ModelNotFound
from shared.schemas import JobSpec, Method

METHOD_NAMES = ", ".join(m.value for m in Method)


def resolve_model(svc: Services, ref: str | None) -> ModelManifest:
    ref = (ref or "").strip() or svc.settings.default_model
    try:
        return svc.models.resolve(ref)
    except ModelNotFound as e:
        known = ", ".join(svc.models.names()) or "none"
        raise ApiError(422, "unknown_model", f"{e}; available models: {known}") from None


def resolve_method(value: str | None, default: str = Method.gradcam.value) -> Method:
    value = (value or "").strip().lower() or default
    try:
        return Method(value)
    except ValueError:
        raise ApiError(422, "unknown_method", f"unknown method '{value[:64]}'; use one of {METHOD_NAMES}") from None


def resolve_class(manifest: ModelManifest, value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return manifest.class_index(value)
    except ValueError as e:
        raise ApiError(422, "unknown_class", str(e)) from None


def build_spec(svc: Services, data: bytes, model: str | None, target_class: str | None, method: str | None) -> JobSpec:
    s = svc.settings
    m = resolve_method(method, s.default_method)
    manifest = resolve_model(svc, model)
    class_id = resolve_class(manifest, target_class)
    if len(data) > s.max_upload_bytes:
        raise ApiError(413, "upload_too_large", f"the upload exceeds {s.max_upload_bytes} bytes")
    try:
        image = inspect(data, max_pixels=s.max_pixels, max_side=s.max_side, allowed_formats=s.allowed_formats)
    except ImageRejected as e:
        raise ApiError(e.status, e.code, e.message) from None
    return JobSpec(model=manifest.name, model_version=manifest.version, method=m, target_class=class_id, image=image)
