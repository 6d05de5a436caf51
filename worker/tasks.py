"""The Celery task the gateway sends by name. The message carries only the job ID."""

from __future__ import annotations

from shared.celery_app import TASK_SEGMENT, app
from worker import runtime


@app.task(name=TASK_SEGMENT, bind=True)
def segment(self, job_id: str) -> dict:
    status = runtime.runner().run(job_id)
    return {"job_id": job_id, "status": status}
