"""The Celery task the gateway sends by name, once per submitted job.

A message is a token for "one job of this model's queue" (see ``shared/jobs.py``): the task
runs the next job(s) in queue order, not necessarily the one whose submission sent it.
The message carries the model name and the submitting job's ID, never image data.
"""

from __future__ import annotations

import logging
import time

from billiard.exceptions import TimeLimitExceeded
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from shared import webhooks
from shared.celery_app import TASK_SEGMENT, app
from shared.redis_conn import OUTAGES
from shared.settings import get_settings
from worker import runtime

log = logging.getLogger("segcam.worker")


class SegmentTask(Task):
    # Flower shows a task's result, the jobs it ran, as Celery's task-succeeded event carries it:
    # cut at 1024 characters by default, which is about 20 job IDs, while a draining task runs
    # hundreds. 64 KiB lists about 1,300, once per task (and every job's record names its worker).
    resultrepr_maxsize = 64 * 1024

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """Runs in the worker's parent when the hard time limit killed the pool child.

        Celery acknowledges a timed-out message, so nothing would come back for the jobs
        the child had claimed: fail them here, with the code a client can act on. Through a
        Redis outage this blocks the parent, up to half the gap between the limits: a worker
        whose Redis is failing has nothing else it could do meanwhile.
        """
        if isinstance(exc, TimeLimitExceeded):
            fail_claims_through_outages(task_id, "the job ran past its hard time limit; its process was replaced")


def fail_claims(token: str, message: str) -> None:
    """Fail the token's unfinished claims as ``timeout`` and forget them: the task is ending,
    and Celery acknowledges its message, so nothing else would end them."""
    jobs = runtime.job_store()
    for job_id in jobs.claimed(token):
        rec = jobs.get(job_id)
        if rec is not None and jobs.fail(job_id, rec.queue, "timeout", message) and rec.spec.callback_url:
            webhooks.schedule(app, jobs.keys, job_id)
    jobs.release(token)


@app.task(name=TASK_SEGMENT, bind=True, base=SegmentTask, ignore_result=True)  # the job record holds the result
def segment(self, model: str, job_id: str | None = None) -> dict:
    return {"jobs": run_through_outages(self.request.id, runtime.queue_for(model), job_id)}


def run_through_outages(token: str, queue: str, hint: str | None) -> dict[str, str]:
    """Run the token; when Redis fails under it (``shared.redis_conn.OUTAGES``), run it again.

    Celery acknowledges a task that raised, and nothing would then run the jobs the token had
    claimed: they would show "running" until their records expired. Run again, the token takes
    its unfinished claims back (``JobStore.take``), as after a crash, and each such run counts
    toward ``max_deliveries``. Retries stop at half the soft time limit, which leaves a re-run
    time to finish; past it the message goes back to the queue (``Reject``) for any worker.
    Should Redis still refuse writes then, the Celery parent cannot end the task at all (an ack
    is a write as well) and exits; the launcher or compose restarts it, and since kombu's
    restore is one transaction, the message stays among the unacknowledged until the
    visibility timeout brings it back.
    """
    try:
        return through_outages(
            lambda: runtime.runner().run_token(token, queue, hint=hint),
            time.monotonic() + get_settings().task_soft_time_limit_s / 2,
            token,
        )
    except SoftTimeLimitExceeded:
        # Inside a job the runner fails that job as timed out; here the limit struck between
        # jobs' steps (storing a batch, claiming the next), so whatever is still claimed ends.
        fail_claims_through_outages(token, "the job ran past its time limit")
        raise


def fail_claims_through_outages(token: str, message: str) -> None:
    """``fail_claims``, riding out a Redis outage for half the time between the soft and hard
    limits. Past that it raises ``Reject``, with the claims still held: from the task, Celery
    gives the message back. From ``on_failure`` after a hard limit, Celery acknowledges the
    timed-out message anyway, and that ack meets the same outage: refused (memory full, read
    only), it stops the worker, which the launcher or compose restarts; with the connection
    lost, the consumer reconnects. Either way the message stays unacknowledged until the
    visibility timeout brings it back, and its next run takes the claims back. Should the ack
    go through instead (the outage ended just then), the orphan sweep puts the jobs back on
    their queue (``worker/orphans.py``)."""
    s = get_settings()
    through_outages(
        lambda: fail_claims(token, message),
        time.monotonic() + (s.task_time_limit_s - s.task_soft_time_limit_s) / 2,
        token,
    )


def through_outages(call, deadline: float, token: str):
    """``call()`` again, after a back-off from 0.25 s doubling to 4 s, while Redis fails under it;
    a retry that would start past ``deadline`` gives the token's message back instead."""
    wait = 0.25
    while True:
        try:
            return call()
        except OUTAGES as e:
            if time.monotonic() + wait > deadline:
                log.error("Redis failed under token %s (%r); its message goes back to the queue", token, e)
                raise Reject(e, requeue=True) from e
            log.warning("Redis failed under token %s (%r); trying again in %.2f s", token, e, wait)
            time.sleep(wait)
            wait = min(2 * wait, 4.0)
