"""The Celery app both sides build: the gateway to send tasks by name, the worker to run them.

The settings encode the field notes (../shared/NOTES.md sections 1 and 3): JSON only, acks
after the task, requeue when the pool child dies, one reserved job per worker, events on,
and a visibility timeout above the hard time limit so a slow job is not handed out twice.
"""

from __future__ import annotations

import base64
import json
import uuid

from celery import Celery

from shared.settings import Settings, get_settings

TASK_SEGMENT = "segcam.segment"


def make_celery(settings: Settings, results: bool = True) -> Celery:
    """``results=False`` for producers: with a Redis backend, Celery would otherwise
    subscribe the sender to a pub/sub channel per task it sends."""
    app = Celery("segcam", broker=settings.redis_url, backend=settings.redis_url if results else None)
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        # Sweep for messages of vanished workers every interval (kombu's default throttle
        # makes it ten intervals): a killed worker's job comes back within about
        # visibility_timeout + interval.
        "unacked_restore_interval": settings.unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_send_task_events=True,
        # The gateway does not publish "task-sent" events: one Redis PUBLISH per submission
        # saved; Flower learns of a job when a worker receives it.
        task_send_sent_event=False,
        task_track_started=False,  # the job record says "running"; one less backend write
        result_expires=settings.result_expires_s,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=settings.visibility_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.redis_connect_timeout_s,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_proc_alive_timeout=settings.worker_proc_alive_timeout_s,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child or None,
        worker_hijack_root_logger=False,
        task_default_queue=f"{settings.key_prefix}.default",
        task_create_missing_queues=True,
    )
    return app


def task_message(app: Celery, name: str, task_id: str, queue: str, kwargs: dict[str, str]) -> bytes:
    """The bytes ``app.send_task(name, kwargs=kwargs, task_id=task_id, queue=queue)`` would
    push onto ``queue``: Celery builds the task message (protocol 2, JSON), wrapped in kombu's
    Redis envelope.

    The gateway pushes it in the same Lua call that creates the job record, so a job and its
    message exist together or not at all, and a submission costs one Redis round trip
    instead of two plus kombu's per-publish client (about 0.3 to 1 ms; docs/performance.md).
    ``tests/unit/test_task_message.py`` checks it against what ``send_task`` itself pushes.
    """
    kwargsrepr = "{" + ", ".join(f"{k!r}: {v!r}" for k, v in kwargs.items()) + "}"
    # ignore_result=None, as send_task leaves it: the worker then applies the task's own
    # (True). A False here would make every task write and publish a result nobody reads.
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id, name, args=(), kwargs=kwargs, argsrepr="()", kwargsrepr=kwargsrepr, ignore_result=None
    )
    properties = {
        **properties,
        "delivery_mode": 2,  # persistent
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    envelope = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }
    return json.dumps(envelope).encode()


# `celery -A shared.celery_app flower` and the gateway use this instance.
app = make_celery(get_settings())
