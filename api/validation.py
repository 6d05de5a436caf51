"""Everything a submission must pass before it is queued, cheapest checks first.

A job is queued only when its form, model, method, class and image are all known good: a
bad request is answered in the request (4xx, naming the problem), never discovered later
by a worker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import FormData, UploadFile

from api import multipart
from api.deps import Services, services
from api.errors import ApiError
from api.multipart import FilePart
from shared import traffic, webhooks
from shared.imaging import ImageRejected, inspect
from shared.model_store import ModelManifest, ModelNotFound
from shared.schemas import JobSpec, Method, Priority

FORM_FIELDS = ("image", "model", "target_class", "method", "priority", "routing_key", "callback_url")
LONG_FIELDS = {"callback_url": 2048}
METHOD_NAMES = ", ".join(m.value for m in Method)


# OpenAPI's view of the submission form. ``checked_form`` reads the form itself: FastAPI's
# per-field ``Form()`` extraction cost more CPU than anything else the gateway does for a
# submission but the Redis call (docs/performance.md).
class SubmitForm(BaseModel):
    """A submission: the image and its options, as a multipart form."""

    model_config = ConfigDict(title="SubmitForm")

    image: str = Field(description="PNG, JPEG, WebP, BMP, GIF or TIFF; sniffed from its bytes.",
                       json_schema_extra={"contentMediaType": "application/octet-stream"})  # fmt: skip
    model: str | None = Field(None, description="Model (`name`, `name:version`, `name:alias`); default from settings.")
    target_class: str | None = Field(
        None, description="Class index or label; default: the largest predicted non-background class."
    )
    method: str | None = Field(
        None,
        description="gradcam (default), gradcam++, hirescam, xgradcam, layercam, eigencam.",
        json_schema_extra={"enum": [m.value for m in Method]},
    )
    priority: str | None = Field(None, description="high, normal (default) or low.",
                                 json_schema_extra={"enum": [p.value for p in Priority]})  # fmt: skip
    routing_key: str | None = Field(
        None, description="Pins the A/B variant: jobs with the same key run the same model version."
    )
    callback_url: str | None = Field(
        None, description="http(s) URL that receives the final status, signed with HMAC-SHA256 (see README)."
    )


SUBMIT_BODY = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": SubmitForm.model_json_schema()}}}
}


@dataclass
class Submission:
    image: FilePart
    fields: dict[str, str | None]


async def read_form(request: Request) -> multipart.Parts:
    """The form's parts: split here when the body is a plain multipart form (``api/multipart.py``),
    else by Starlette's parser from the same bytes, with its answers to a malformed body."""
    body = await request.body()
    try:
        parts = multipart.parse(body, request.headers.get("content-type", ""))
    except multipart.Truncated as e:
        raise ApiError(400, "truncated_form", f"{e}; was the upload cut short?") from None
    if parts is not None:
        return parts
    return await form_parts(await request.form())  # Starlette's parser reads the body kept above


async def form_parts(form: FormData) -> multipart.Parts:
    """Starlette's parsed form in ``api/multipart.py``'s terms; closes its spooled files."""
    try:
        return [
            (k, FilePart(v.filename or "", await v.read()) if isinstance(v, UploadFile) else v)
            for k, v in form.multi_items()
        ]
    finally:
        await form.close()


async def checked_form(request: Request, svc: Services = Depends(services)) -> Submission:
    """The submitted form, refusing unknown fields (a typo would otherwise be silently
    ignored), repeated and oversized ones, and a missing or non-file image."""
    parts = await read_form(request)
    unknown = sorted({k for k, _ in parts if k not in FORM_FIELDS})
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise ApiError(422, "unknown_field", f"unknown form field(s) {names}; accepted: {', '.join(FORM_FIELDS)}")
    fields: dict[str, str | None] = {}
    image = None
    for key in FORM_FIELDS:
        values = [v for k, v in parts if k == key]
        if len(values) > 1:
            raise ApiError(422, "duplicate_field", f"form field '{key}' was sent {len(values)} times")
        value = values[0] if values else None
        if key == "image":
            if not isinstance(value, FilePart):
                why = "is missing" if value is None else "must be a file part (with a filename), not a text field"
                raise ApiError(422, "invalid_request", f"form field 'image' {why}")
            image = value
            continue
        if isinstance(value, FilePart):
            raise ApiError(422, "invalid_request", f"form field '{key}' must be text, not a file")
        limit = LONG_FIELDS.get(key, svc.settings.max_field_chars)
        if value is not None and len(value) > limit:
            raise ApiError(422, "field_too_long", f"form field '{key}' is longer than {limit} characters")
        fields[key] = value
    return Submission(image, fields)


def resolve_model(svc: Services, ref: str | None, routing_key: str | None = None) -> tuple[ModelManifest, str | None]:
    """The version to run and, when the model's traffic table chose it, the variant."""
    ref = (ref or "").strip() or svc.settings.default_model
    try:
        name, _, tag = ref.partition(":")
        if not tag and (table := svc.models.traffic(name)):
            variant = traffic.pick(table, routing_key)
            if variant is not None:
                return svc.models.resolve(f"{name}:{variant}"), variant
        return svc.models.resolve(ref), None
    except ModelNotFound as e:
        known = ", ".join(svc.models.names()) or "none"
        raise ApiError(422, "unknown_model", f"{e}; available models: {known}") from None


def resolve_method(value: str | None, default: str = Method.gradcam.value) -> Method:
    value = (value or "").strip().lower() or default
    try:
        return Method(value)
    except ValueError:
        raise ApiError(422, "unknown_method", f"unknown method '{value[:64]}'; use one of {METHOD_NAMES}") from None


def resolve_priority(value: str | None) -> Priority:
    value = (value or "").strip().lower() or Priority.normal.value
    try:
        return Priority(value)
    except ValueError:
        raise ApiError(422, "unknown_priority", f"unknown priority '{value[:64]}'; use high, normal or low") from None


def resolve_class(manifest: ModelManifest, value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return manifest.class_index(value)
    except ValueError as e:
        raise ApiError(422, "unknown_class", str(e)) from None


def resolve_callback(svc: Services, url: str | None) -> str | None:
    url = (url or "").strip()
    if not url:
        return None
    if not svc.settings.webhook_secret:
        raise ApiError(422, "webhooks_disabled", "this deployment has no webhook secret; callback_url is not accepted")
    try:
        webhooks.check_url(url, svc.settings.webhook_allow_private, resolve=False)
    except webhooks.UnsafeTarget as e:
        raise ApiError(422, "invalid_callback_url", str(e)) from None
    return url


def build_spec(
    svc: Services,
    data: bytes,
    model: str | None,
    target_class: str | None,
    method: str | None,
    priority: str | None = None,
    routing_key: str | None = None,
    callback_url: str | None = None,
) -> JobSpec:
    s = svc.settings
    m = resolve_method(method, s.default_method)
    p = resolve_priority(priority)
    manifest, variant = resolve_model(svc, model, routing_key)
    class_id = resolve_class(manifest, target_class)
    callback = resolve_callback(svc, callback_url)
    if len(data) > s.max_upload_bytes:
        raise ApiError(413, "upload_too_large", f"the upload exceeds {s.max_upload_bytes} bytes")
    try:
        image = inspect(data, max_pixels=s.max_pixels, max_side=s.max_side, allowed_formats=s.allowed_formats)
    except ImageRejected as e:
        raise ApiError(e.status, e.code, e.message) from None
    return JobSpec(
        model=manifest.name,
        model_version=manifest.version,
        method=m,
        target_class=class_id,
        priority=p,
        variant=variant,
        callback_url=callback,
        image=image,
    )


def fingerprint(spec: JobSpec, data: bytes) -> str:
    """What makes two submissions "the same request" for an Idempotency-Key."""
    h = hashlib.sha256(data)
    h.update(spec.model_dump_json(include={"model", "model_version", "method", "target_class", "priority"}).encode())
    return h.hexdigest()[:32]
