"""The sweep for jobs whose Celery message is gone; it runs in the worker's parent.

A job's message is what brings it back after its worker dies: acknowledged late, it stays
among kombu's unacknowledged until the visibility timeout returns it. A running job loses it
when Celery acknowledges a message whose task ended while Redis could not record the job's end
(``worker/tasks.fail_claims_through_outages``: an outage that ends just as the hook gives up),
or when a Redis restarts or fails over without the unacknowledged record: the job would show
``running`` until its record expired. A queued job loses it when a worker dies between the
BRPOP that took it and kombu's write of the unacknowledged record: the job would wait for a
later submission's message. Every worker sweeps the running jobs and its own queues, each step
one script, so two workers never put a job back twice, as every worker's kombu sweeps for the
messages of vanished workers.
"""

from __future__ import annotations

import logging
import threading
import uuid

import redis

from shared.celery_app import TASK_SEGMENT, app, task_message
from shared.jobs import JobStore
from shared.logs import job_context

log = logging.getLogger("segcam.worker")


def new_message(job_id: str, queue: str, model: str) -> bytes:
    """A fresh token for the job, as the gateway sends one (a new task ID: the old token's
    message may still exist somewhere, and its claims are not this one's)."""
    return task_message(app, TASK_SEGMENT, uuid.uuid4().hex, queue, {"model": model, "job_id": job_id})


class OrphanSweep(threading.Thread):
    def __init__(self, jobs: JobStore, older_than_s: float, interval_s: float, queues: tuple[str, ...] = ()) -> None:
        super().__init__(name="segcam-orphans", daemon=True)
        self.jobs = jobs
        self.queues = queues
        self.older_than_s = older_than_s
        self.interval_s = interval_s
        self.previous_run: tuple[str, float] | None = None  # (name, start in Redis time): see take_back
        self._halt = threading.Event()

    def sweep(self) -> list[str]:
        """The running jobs put back (the queued ones given a message are only logged)."""
        try:
            back = self.jobs.requeue_orphans(self.older_than_s, new_message)
            topped = {q: n for q in self.queues if (n := self.jobs.top_up_tokens(q, new_message))}
        except redis.RedisError as e:  # the next sweep tries again
            log.warning("orphan sweep failed: %s", e)
            return []
        for job_id in back:
            with job_context(job_id):
                log.warning("still running %.0f s after its claim, with no message left to take it back: "
                            "queued again", self.older_than_s)  # fmt: skip
        for queue, n in topped.items():
            log.warning("%d queued job(s) of %s had no message; each got a new one", n, queue)
        return back

    def take_back(self, worker: str, started: float) -> list[str]:
        """The jobs this worker's previous run (same name, claims before ``started``, Redis time)
        left running when it died: a SIGKILL, an OOM kill of the whole container, a host reboot.
        Their messages would come back only after the visibility timeout (ten minutes by
        default); a worker restarted under its name (the launcher, a container's restart
        policy) knows at once that no process of its name runs them any more."""
        try:
            back = self.jobs.requeue_orphans(0, new_message, limit=1000, worker=worker, cutoff=started)
        except redis.RedisError as e:  # the visibility timeout and the periodic sweep remain
            log.warning("could not take back the jobs of this worker's previous run: %s", e)
            return []
        for job_id in back:
            with job_context(job_id):
                log.warning("left running by this worker's previous run (%s), which died: queued again", worker)
        return back

    def run(self) -> None:
        if self.previous_run is not None:
            self.take_back(*self.previous_run)
        while not self._halt.wait(self.interval_s):
            self.sweep()

    def stop(self) -> None:
        self._halt.set()
