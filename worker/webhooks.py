"""``python -m worker.webhooks``: deliver completion webhooks (a Celery worker with a thread pool).

Kept apart from the GPU workers (and free of torch) so a slow or dead receiver never holds
a GPU. Each attempt is recorded on the job; failures are retried with exponential backoff
up to ``SEGCAM_WEBHOOK_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import socket
import sys
import time
from datetime import UTC, datetime

import httpx
from celery import signals

from shared import logs
from shared.celery_app import app
from shared.jobs import JobStore
from shared.keys import Keys
from shared.redis_conn import get_redis
from shared.schemas import WebhookAttempt, WebhookStatus
from shared.settings import get_settings
from shared.views import job_view
from shared.webhooks import TASK_WEBHOOK, UnsafeTarget, check_url, signature


@signals.setup_logging.connect
def _logging(**_kwargs) -> None:
    s = get_settings()
    logs.configure("webhooks", s.log_level, s.log_json)


def _store() -> JobStore:
    s = get_settings()
    return JobStore(get_redis(s), Keys(s.key_prefix), s.job_ttl_s, s.upload_ttl_s)


def post(url: str, body: bytes, secret: str, timeout_s: float) -> httpx.Response:
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "segcam-webhook/1",
        "X-Segcam-Timestamp": str(ts),
        "X-Segcam-Signature": signature(secret, ts, body),
    }
    return httpx.post(url, content=body, headers=headers, timeout=timeout_s, follow_redirects=False)


@app.task(name=TASK_WEBHOOK, bind=True, acks_late=True, max_retries=None)
def deliver(self, job_id: str) -> dict:
    s = get_settings()
    jobs = _store()
    rec = jobs.get(job_id)
    if rec is None or not rec.spec.callback_url or not rec.status.final:
        return {"job_id": job_id, "delivered": False, "reason": "nothing to deliver"}
    status = rec.webhook or WebhookStatus(url=rec.spec.callback_url)
    if status.delivered:
        return {"job_id": job_id, "delivered": True}
    body = job_view(rec, s.public_base_url).model_dump_json().encode()
    attempt = WebhookAttempt(at=datetime.now(UTC))
    try:
        check_url(rec.spec.callback_url, s.webhook_allow_private)  # again at delivery: DNS may have changed
        r = post(rec.spec.callback_url, body, s.webhook_secret, s.webhook_timeout_s)
        attempt.status_code = r.status_code
        status.delivered = 200 <= r.status_code < 300
        if not status.delivered:
            attempt.error = f"receiver answered {r.status_code}"
    except UnsafeTarget as e:
        attempt.error = str(e)
        status.attempts.append(attempt)
        jobs.set_webhook(job_id, status)
        return {"job_id": job_id, "delivered": False, "reason": str(e)}  # never retried
    except httpx.HTTPError as e:
        attempt.error = f"{type(e).__name__}: {e}"[:300]
    status.attempts.append(attempt)
    jobs.set_webhook(job_id, status)
    jobs.notify(job_id)
    if not status.delivered and len(status.attempts) < s.webhook_max_attempts:
        raise self.retry(countdown=s.webhook_backoff_s * 2 ** (len(status.attempts) - 1))
    return {"job_id": job_id, "delivered": status.delivered, "attempts": len(status.attempts)}


def main() -> int:
    s = get_settings()
    logs.configure("webhooks", s.log_level, s.log_json)
    name = f"webhooks@{socket.gethostname()}"
    argv = ["worker", "--pool=threads", f"--concurrency={s.webhook_concurrency}", f"--hostname={name}",
            f"--queues={Keys(s.key_prefix).webhook_queue()}", "--task-events", f"--loglevel={s.log_level}"]  # fmt: skip
    app.worker_main(["--quiet", *argv] if s.log_json else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
