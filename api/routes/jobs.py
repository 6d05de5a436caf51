"""Submit a job, read its status, download its artifacts."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, File, Form, Path, UploadFile
from fastapi.responses import JSONResponse, Response

from api.deps import Services, services
from api.errors import ApiError, responses
from api.queueing import enqueue
from api.validation import build_spec
from shared.jobs import JobRecord
from shared.schemas import ARTIFACT_NAMES, JobAccepted, JobStatus, JobView

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def _ts(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


def job_url(svc: Services, job_id: str, suffix: str = "") -> str:
    return f"{svc.settings.public_base_url}/v1/jobs/{job_id}{suffix}"


def view(svc: Services, rec: JobRecord) -> JobView:
    result = rec.result
    if result is not None:
        result = result.model_copy(
            update={"artifacts": {n: job_url(svc, rec.id, f"/artifacts/{n}") for n in ARTIFACT_NAMES}}
        )
    return JobView(
        id=rec.id,
        status=rec.status,
        model=rec.spec.model,
        model_version=rec.spec.model_version,
        method=rec.spec.method,
        target_class=rec.spec.target_class,
        created_at=_ts(rec.created_at),
        started_at=_ts(rec.started_at),
        finished_at=_ts(rec.finished_at),
        position=rec.position,
        error=rec.error,
        result=result,
    )


def load(svc: Services, job_id: str) -> JobRecord:
    rec = svc.jobs.get(job_id) if _JOB_ID.match(job_id) else None
    if rec is None:
        raise ApiError(404, "job_not_found", f"no job with ID '{job_id[:64]}' (unknown or expired)")
    return rec


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    summary="Submit an image for segmentation and Grad-CAM",
    responses=responses(413, 415, 422, 503),
)
def submit(
    image: UploadFile = File(..., description="PNG, JPEG, WebP, BMP, GIF or TIFF; sniffed from its bytes."),
    model: str | None = Form(
        None, description="Model name (`name`, `name:version`, `name:alias`); default from settings."
    ),
    target_class: str | None = Form(
        None, description="Class index or label; default: the largest predicted non-background class."
    ),
    method: str | None = Form(
        None, description="gradcam (default), gradcam++, hirescam, xgradcam, layercam, eigencam."
    ),
    svc: Services = Depends(services),
) -> JSONResponse:
    data = image.file.read(svc.settings.max_upload_bytes + 1)
    spec = build_spec(svc, data, model, target_class, method)
    job_id, position = enqueue(svc, spec, data)
    url = job_url(svc, job_id)
    body = JobAccepted(id=job_id, status=JobStatus.queued, position=position, url=url)
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers={"Location": url})


@router.get(
    "/{job_id}", response_model=JobView, summary="A job's status and, when done, its result", responses=responses(404)
)
def get_job(job_id: str, svc: Services = Depends(services)) -> JobView:
    return view(svc, load(svc, job_id))


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download a PNG artifact: mask (palette of class indices), heatmap (8-bit gray) or overlay (RGB)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **responses(404, 409)},
)
def get_artifact(
    job_id: str, name: str = Path(description="mask, heatmap or overlay"), svc: Services = Depends(services)
) -> Response:
    if name not in ARTIFACT_NAMES:
        raise ApiError(404, "unknown_artifact", f"no artifact '{name[:64]}'; use one of {', '.join(ARTIFACT_NAMES)}")
    rec = load(svc, job_id)
    if rec.status is not JobStatus.succeeded:
        raise ApiError(409, "not_ready", f"job is {rec.status.value}; artifacts exist only for succeeded jobs")
    data = svc.artifacts.get(job_id, name)
    if data is None:
        raise ApiError(404, "artifact_expired", f"artifact '{name}' of job {job_id} has expired")
    return Response(data, media_type="image/png")
