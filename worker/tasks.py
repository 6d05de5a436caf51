"""The Celery task the gateway sends by name, once per submitted job.

A message is a token for "one job of this model's queue" (see ``shared/jobs.py``): the task
runs the next job(s) in queue order, not necessarily the one whose submission sent it.
The message carries the model name and the submitting job's ID, never image data.
"""

from __future__ import annotations

import logging

from billiard.exceptions import TimeLimitExceeded
from celery import Task

from shared import webhooks
from shared.celery_app import TASK_SEGMENT, app
from worker import runtime

log = logging.getLogger("segcam.worker")


class SegmentTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """Runs in the worker's parent when the hard time limit killed the pool child.

        Celery acknowledges a timed-out message, so nothing would come back for the jobs
        the child had claimed: fail them here, with the code a client can act on.
        """
        if not isinstance(exc, TimeLimitExceeded):
            return
        jobs = runtime.job_store()
        msg = "the job ran past its hard time limit; its process was replaced"
        for job_id in jobs.claimed(task_id):
            rec = jobs.get(job_id)
            if rec is not None and jobs.fail(job_id, rec.queue, "timeout", msg) and rec.spec.callback_url:
                webhooks.schedule(app, jobs.keys, job_id)
        jobs.release(task_id)


@app.task(name=TASK_SEGMENT, bind=True, base=SegmentTask, ignore_result=True)  # the job record holds the result
def segment(self, model: str, job_id: str | None = None) -> dict:
    outcome = runtime.runner().run_token(self.request.id, runtime.queue_for(model), hint=job_id)
    return {"jobs": outcome}
