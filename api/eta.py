"""A job's ETA: its place in the queue, the live workers serving its model and the moving
average of their recent per-job service times.

Those inputs are the queue's, not the job's, and an SSE follower's ETA is recomputed each time
its queue moves: with hundreds of streams open, reading them per follower was three blocking
Redis round trips per stream per move. They are read at most once per
``events_position_interval_s`` per queue instead.
"""

from __future__ import annotations

import time

import redis

from shared.jobs import JobRecord, JobStore
from shared.keys import Keys
from shared.presence import live_workers
from shared.schemas import JobStatus


class Etas:
    def __init__(self, jobs: JobStore, client: redis.Redis, keys: Keys, ttl_s: float) -> None:
        self.jobs, self.redis, self.keys, self.ttl_s = jobs, client, keys, ttl_s
        self._inputs: dict[tuple[str, str], tuple[float, float | None, int]] = {}

    def inputs(self, queue: str, model: str) -> tuple[float | None, int]:
        """The queue's mean service time (None: no history yet) and its model's live workers."""
        now = time.monotonic()
        hit = self._inputs.get((queue, model))
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1], hit[2]
        avg = self.jobs.mean_service_s(queue)
        workers = sum(1 for w in live_workers(self.redis, self.keys) if model in w.get("models", []))
        self._inputs[(queue, model)] = (now, avg, workers)
        return avg, workers

    def serving(self, rec: JobRecord) -> int | None:
        """While the job is queued, the live workers that serve its model: 0 tells a client why
        a job does not move (no worker for that model runs), which an ETA of None alone does not."""
        if rec.status is not JobStatus.queued:
            return None
        return self.inputs(rec.queue, rec.spec.model)[1]

    def of(self, rec: JobRecord) -> float | None:
        """Seconds until the job should finish; None when final or nothing to go on."""
        if rec.status.final:
            return None
        avg, workers = self.inputs(rec.queue, rec.spec.model)
        if avg is None or workers == 0:
            return None
        if rec.status is JobStatus.running:
            return round(max(0.0, avg - (time.time() - (rec.started_at or time.time()))), 3)
        position = rec.position or 0
        return round((position // workers + 0.5) * avg + avg, 3)
