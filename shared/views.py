"""A job record as clients see it: the API's responses and the webhook payloads are the same."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.jobs import JobRecord
from shared.schemas import ARTIFACT_NAMES, JobStatus, JobView


def _ts(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


def job_url(base_url: str, job_id: str, suffix: str = "") -> str:
    return f"{base_url}/v1/jobs/{job_id}{suffix}"


def job_view(rec: JobRecord, base_url: str = "", eta_s: float | None = None, workers: int | None = None) -> JobView:
    result = rec.result
    if result is not None:
        urls = {n: job_url(base_url, rec.id, f"/artifacts/{n}") for n in ARTIFACT_NAMES}
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
        eta_s=eta_s,
        workers=workers,
        callback_url=rec.spec.callback_url,
        webhook=rec.webhook,
        error=rec.error,
        result=result,
    )
