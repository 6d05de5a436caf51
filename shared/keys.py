"""The Redis key layout, in one place.

Everything segcam writes lives under ``{prefix}:``; two deployments (or two test runs)
with different prefixes share a Redis server without seeing each other. Celery's own
queues are named from the same prefix for the same reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    def job(self, job_id: str) -> str:
        """Hash: the job record, the gateway's source of truth (Celery's is not)."""
        return f"{self.prefix}:job:{job_id}"

    def upload(self, job_id: str) -> str:
        """String: the uploaded image bytes, never put inside a Celery message."""
        return f"{self.prefix}:upload:{job_id}"

    def artifact(self, job_id: str, name: str) -> str:
        """String: one PNG artifact (mask, heatmap, overlay)."""
        return f"{self.prefix}:artifact:{job_id}:{name}"

    def queued(self, queue: str) -> str:
        """Sorted set: queued job IDs by enqueue order; ZRANK is the queue position."""
        return f"{self.prefix}:queued:{queue}"

    def claims(self, token: str) -> str:
        """Set: the jobs one Celery task (a token) has claimed and not yet released."""
        return f"{self.prefix}:claims:{token}"

    def running(self) -> str:
        """Sorted set: running job IDs, scored by their latest claim (Redis time): where the
        orphan sweep looks for jobs that no Celery message will take back (worker/orphans.py)."""
        return f"{self.prefix}:running"

    def completions(self, queue: str) -> str:
        """Sorted set: jobs of a queue finished in the last minute, by time (the drain rate)."""
        return f"{self.prefix}:done:{queue}"

    def idempotency(self, owner: str, key: str) -> str:
        """String: "job_id fingerprint" for an Idempotency-Key (hashed: keys are client data)."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        return f"{self.prefix}:idem:{owner or '-'}:{digest}"

    def rate(self, owner: str, window: int) -> str:
        """Counter: submissions of one API key in one rate-limit window."""
        return f"{self.prefix}:rate:{owner}:{window}"

    def variants(self, model: str) -> str:
        """Hash: jobs routed to each A/B variant of a model."""
        return f"{self.prefix}:variants:{model}"

    def webhook_queue(self) -> str:
        """The Celery queue of completion webhooks (served by ``python -m worker.webhooks``)."""
        return f"{self.prefix}.webhooks"

    def job_events(self, job_id: str) -> str:
        """Pub/sub channel: the job's record changed (status, stage)."""
        return f"{self.prefix}:ev:job:{job_id}"

    def queue_events(self, queue: str) -> str:
        """Pub/sub channel: positions in a queue changed."""
        return f"{self.prefix}:ev:queue:{queue}"

    def events_pattern(self) -> str:
        return f"{self.prefix}:ev:*"

    def metrics(self) -> str:
        """Hash: cluster-wide counters and histogram buckets, rendered by the API's /metrics."""
        return f"{self.prefix}:metrics"

    def service_times(self, queue: str) -> str:
        """List: the most recent per-job service times of a queue (seconds), for ETAs."""
        return f"{self.prefix}:svc:{queue}"

    def model_of(self, queue: str) -> str:
        return queue.removeprefix(f"{self.prefix}.jobs.")

    def sequence(self) -> str:
        """Counter: a global enqueue sequence, the score in ``queued``."""
        return f"{self.prefix}:seq"

    def worker(self, name: str) -> str:
        """String with TTL: a live worker's heartbeat (device, models)."""
        return f"{self.prefix}:worker:{name}"

    def workers(self) -> str:
        """Sorted set: worker names by last heartbeat time."""
        return f"{self.prefix}:workers"

    def celery_queue(self, model: str) -> str:
        """The Celery (kombu) queue that carries jobs for one model."""
        return f"{self.prefix}.jobs.{model}"
