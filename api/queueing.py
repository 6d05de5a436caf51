"""Put a validated job on the queue: its record and its Celery message (task by name), at once.

One Lua call stores the upload and the record, enters the queue order and pushes the
message, so a worker never meets a job it cannot look up and no job is ever shown as queued
that has no message (a Redis failure answers 503 and leaves nothing behind). A full queue
is refused here (429) with a Retry-After from the measured drain rate, and nothing accepted
is ever dropped.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

from api.auth import Principal
from api.deps import Services
from api.errors import ApiError
from api.validation import fingerprint
from shared.celery_app import TASK_SEGMENT, task_message
from shared.logs import job_context
from shared.schemas import JobSpec

log = logging.getLogger("segcam.api")


@dataclass
class Enqueued:
    job_id: str
    position: int | None
    replayed: bool = False


def retry_after_s(depth: int, max_depth: int, drain_per_s: float) -> int:
    """Seconds until the queue has room again, at the rate it has been draining."""
    if drain_per_s <= 0:
        return 10
    return max(1, min(3600, math.ceil((depth - max_depth + 1) / drain_per_s)))


def new_job_id() -> str:
    return uuid.uuid4().hex


def enqueue(
    svc: Services,
    spec: JobSpec,
    data: bytes,
    who: Principal,
    idempotency_key: str | None = None,
    job_id: str | None = None,
) -> Enqueued:
    """``job_id`` may be chosen beforehand, so a caller can listen for the job's events
    before any worker can see it."""
    s = svc.settings
    job_id = job_id or new_job_id()
    queue = svc.keys.celery_queue(spec.model)
    message = task_message(svc.celery, TASK_SEGMENT, job_id, queue, {"model": spec.model, "job_id": job_id})
    created = svc.jobs.create(  # the record and the Celery message together, in one round trip
        job_id,
        spec,
        queue,
        data,
        priority_band=spec.priority.band,
        max_depth=s.max_queue_depth,
        owner=who.owner,
        idempotency_key=idempotency_key,
        idempotency_ttl_s=s.idempotency_ttl_s,
        fingerprint=fingerprint(spec, data) if idempotency_key else "",
        message=message,
    )
    if created.full:
        retry = retry_after_s(created.position or s.max_queue_depth, s.max_queue_depth, created.drain_per_s)
        raise ApiError(
            429,
            "queue_full",
            f"the queue for model '{spec.model}' holds {s.max_queue_depth} jobs; retry in about {retry} s",
            {"Retry-After": str(retry)},
        )
    if created.replayed:
        if not created.fingerprint_matches:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            )
        return Enqueued(job_id=created.job_id, position=None, replayed=True)
    with job_context(job_id):
        log.info(
            "queued job for %s:%s (%s) at position %s", spec.model, spec.model_version, spec.method, created.position
        )
    return Enqueued(job_id=job_id, position=created.position)
