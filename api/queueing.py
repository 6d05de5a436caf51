"""Put a validated job on the queue: record first, then the Celery message (by task name).

The record exists before the message, so a worker never meets a job it cannot look up;
if the message cannot be sent, the record is removed and the client gets a 503, so no
job is ever shown as queued that is not.
"""

from __future__ import annotations

import logging
import uuid

from api.deps import Services
from api.errors import ApiError
from shared.celery_app import TASK_SEGMENT
from shared.schemas import JobSpec

log = logging.getLogger("segcam.api")


def enqueue(svc: Services, spec: JobSpec, data: bytes) -> tuple[str, int]:
    """Returns the new job's ID and its position in its model's queue."""
    job_id = uuid.uuid4().hex
    queue = svc.keys.celery_queue(spec.model)
    position = svc.jobs.create(job_id, spec, queue, data)
    try:
        svc.celery.send_task(TASK_SEGMENT, kwargs={"model": spec.model, "job_id": job_id}, task_id=job_id, queue=queue)
    except Exception as e:  # kombu raises OperationalError and friends when the broker is down
        log.warning("could not queue job %s: %s", job_id, e)
        try:
            svc.jobs.discard(job_id, queue)
        except Exception:
            log.exception("could not discard job %s after a failed send", job_id)
        raise ApiError(
            503, "queue_unavailable", "the job queue is unreachable; retry shortly", {"Retry-After": "5"}
        ) from None
    return job_id, position
