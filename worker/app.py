"""The worker's Celery app: the shared configuration plus segcam's task and signal handlers.

Start it with ``python -m worker`` (which checks the device first), not ``celery worker``.
"""

from __future__ import annotations

from shared.celery_app import app
from worker import signals, tasks  # noqa: F401  (registers the task and the handlers)

app.conf.worker_consumer = "worker.consumer:Consumer"
app.conf.broker_transport = "worker.broker:Transport"

__all__ = ["app"]
