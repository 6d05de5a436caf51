"""Submit a job, read its status, cancel it, download its artifacts."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, File, Form, Header, Path, UploadFile
from fastapi.responses import JSONResponse, Response

from api.auth import Principal, enforce_rate_limit, principal
from api.deps import Services, services
from api.errors import ApiError, responses
from api.queueing import enqueue
from api.validation import build_spec, checked_form
from shared.jobs import JobRecord
from shared.schemas import ARTIFACT_NAMES, JobAccepted, JobStatus, JobView, Method, Priority

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def _ts(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


def job_url(svc: Services, job_id: str, suffix: str = "") -> str:
    return f"{svc.settings.public_base_url}/v1/jobs/{job_id}{suffix}"


def view(svc: Services, rec: JobRecord) -> JobView:
    result = rec.result
    if result is not None:
        urls = {n: job_url(svc, rec.id, f"/artifacts/{n}") for n in ARTIFACT_NAMES}
        result = result.model_copy(update={"artifacts": urls})
    return JobView(
        id=rec.id,
        status=rec.status,
        model=rec.spec.model,
        model_version=rec.spec.model_version,
        method=rec.spec.method,
        target_class=rec.spec.target_class,
        priority=rec.spec.priority,
        variant=rec.spec.variant,
        created_at=_ts(rec.created_at),
        started_at=_ts(rec.started_at),
        finished_at=_ts(rec.finished_at),
        position=rec.position,
        stage=rec.stage if rec.status is JobStatus.running else None,
        cancel_requested=rec.cancel_requested,
        attempts=rec.deliveries,
        worker=rec.worker,
        error=rec.error,
        result=result,
    )


def load(svc: Services, job_id: str, who: Principal) -> JobRecord:
    rec = svc.jobs.get(job_id) if _JOB_ID.match(job_id) else None
    if rec is None or rec.owner != who.owner:  # another key's job is indistinguishable from none
        raise ApiError(404, "job_not_found", f"no job with ID '{job_id[:64]}' (unknown or expired)")
    return rec


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    summary="Submit an image for segmentation and Grad-CAM",
    responses=responses(400, 401, 413, 415, 422, 429, 503),
    dependencies=[Depends(checked_form)],
)
def submit(
    image: UploadFile = File(..., description="PNG, JPEG, WebP, BMP, GIF or TIFF; sniffed from its bytes."),
    model: str | None = Form(None, description="Model (`name`, `name:version`, `name:alias`); default from settings."),
    target_class: str | None = Form(
        None, description="Class index or label; default: the largest predicted non-background class."
    ),
    method: str | None = Form(
        None,
        description="gradcam (default), gradcam++, hirescam, xgradcam, layercam, eigencam.",
        json_schema_extra={"enum": [m.value for m in Method]},
    ),
    priority: str | None = Form(
        None, description="high, normal (default) or low.", json_schema_extra={"enum": [p.value for p in Priority]}
    ),
    routing_key: str | None = Form(
        None, description="Pins the A/B variant: jobs with the same key run the same model version."
    ),
    idempotency_key: str | None = Header(
        None, max_length=255, description="Repeat a submission safely: the same key returns the same job."
    ),
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> JSONResponse:
    enforce_rate_limit(svc, who)
    data = image.file.read(svc.settings.max_upload_bytes + 1)
    routing = routing_key or (f"{who.owner}:{idempotency_key}" if idempotency_key else None)
    spec = build_spec(svc, data, model, target_class, method, priority, routing)
    out = enqueue(svc, spec, data, who, idempotency_key)
    url = job_url(svc, out.job_id)
    if out.replayed:
        rec = load(svc, out.job_id, who)
        body = JobAccepted(id=rec.id, status=rec.status, position=rec.position, url=url)
        headers = {"Location": url, "Idempotent-Replayed": "true"}
    else:
        body = JobAccepted(id=out.job_id, status=JobStatus.queued, position=out.position, url=url)
        headers = {"Location": url}
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)


@router.get(
    "/{job_id}",
    response_model=JobView,
    summary="A job's status and, when done, its result",
    responses=responses(401, 404),
)
def get_job(job_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> JobView:
    return view(svc, load(svc, job_id, who))


@router.delete(
    "/{job_id}",
    response_model=JobView,
    summary="Cancel a job: a queued job never runs; a running one stops at its next stage",
    responses={202: {"model": JobView}, **responses(401, 404, 409)},
)
def cancel_job(job_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> JSONResponse:
    rec = load(svc, job_id, who)
    outcome = svc.jobs.cancel(job_id, rec.queue)
    if outcome not in ("cancelled", "cancelling"):
        raise ApiError(409, "already_finished", f"job is already {outcome}; there is nothing to cancel")
    body = view(svc, load(svc, job_id, who)).model_dump(mode="json")
    return JSONResponse(body, status_code=200 if outcome == "cancelled" else 202)


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download a PNG artifact: mask (palette of class indices), heatmap (8-bit gray) or overlay (RGB)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **responses(401, 404, 409)},
)
def get_artifact(
    job_id: str,
    name: str = Path(description="mask, heatmap or overlay"),
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> Response:
    if name not in ARTIFACT_NAMES:
        raise ApiError(404, "unknown_artifact", f"no artifact '{name[:64]}'; use one of {', '.join(ARTIFACT_NAMES)}")
    rec = load(svc, job_id, who)
    if rec.status is not JobStatus.succeeded:
        raise ApiError(409, "not_ready", f"job is {rec.status.value}; artifacts exist only for succeeded jobs")
    data = svc.artifacts.get(job_id, name)
    if data is None:
        raise ApiError(404, "artifact_expired", f"artifact '{name}' of job {job_id} has expired")
    return Response(data, media_type="image/png")
