"""Put a validated job on the queue: record first, then the Celery message (by task name).

The record exists before the message, so a worker never meets a job it cannot look up; if
the message cannot be sent, the record is removed and the client gets a 503, so no job is
ever shown as queued that is not. A full queue is refused here (429) with a Retry-After
from the measured drain rate, and nothing accepted is ever dropped.
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
from shared.celery_app import TASK_SEGMENT
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


def enqueue(svc: Services, spec: JobSpec, data: bytes, who: Principal, idempotency_key: str | None = None) -> Enqueued:
    s = svc.settings
    job_id = uuid.uuid4().hex
    queue = svc.keys.celery_queue(spec.model)
    created = svc.jobs.create(
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
    )
    if created.full:
        retry = retry_after_s(created.position or s.max_queue_depth, s.max_queue_depth, svc.jobs.drain_rate(queue))
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
    try:
        svc.celery.send_task(
            TASK_SEGMENT,
            kwargs={"model": spec.model, "job_id": job_id},
            task_id=job_id,
            queue=queue,
            argsrepr="()",  # given, so Celery skips its saferepr of the arguments
            kwargsrepr=f"{{'model': '{spec.model}', 'job_id': '{job_id}'}}",
        )
    except Exception as e:  # kombu raises OperationalError and friends when the broker is down
        log.warning("could not queue job %s: %s", job_id, e)
        try:
            svc.jobs.discard(job_id, queue, who.owner, idempotency_key)
        except Exception:
            log.exception("could not discard job %s after a failed send", job_id)
        raise ApiError(
            503, "queue_unavailable", "the job queue is unreachable; retry shortly", {"Retry-After": "5"}
        ) from None
    with job_context(job_id):
        log.info(
            "queued job for %s:%s (%s) at position %s", spec.model, spec.model_version, spec.method, created.position
        )
    return Enqueued(job_id=job_id, position=created.position)
