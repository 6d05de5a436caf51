"""Worker lifecycle: models load in the pool child; the heartbeat and the orphan sweep run in the parent.

``worker_process_init`` fires in the child after the fork, the only safe place to touch
CUDA and load weights; ``worker_proc_alive_timeout`` is raised above the load time so
Celery does not kill a child that is still loading.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from functools import partial

import redis
from celery import signals

from shared import logs
from shared.keys import Keys
from shared.model_store import ModelStore
from shared.presence import Heartbeat
from shared.redis_conn import get_redis
from shared.settings import get_settings
from worker import runtime, shutdown
from worker.model_watch import ModelWatch
from worker.orphans import OrphanSweep

log = logging.getLogger("segcam.worker")
_heartbeat: Heartbeat | None = None
_orphans: OrphanSweep | None = None
_model_watch: ModelWatch | None = None
_started: float | None = None


@signals.setup_logging.connect
def _logging(**_kwargs) -> None:
    """Replace Celery's log setup with segcam's (plain or JSON, with job IDs)."""
    s = get_settings()
    logs.configure("worker", s.log_level, s.log_json)


@signals.worker_process_init.connect
def _load_models(**_kwargs) -> None:
    name = os.environ.get("SEGCAM_WORKER_NAME", f"worker-{os.getpid()}")
    runtime.init(name)


@signals.worker_init.connect
def _note_start(**_kwargs) -> None:
    """Redis's clock before the pool starts: claims stamped earlier under this worker's name
    were made by a previous run of it (``OrphanSweep.take_back``), never by this one."""
    global _started
    try:
        now_s, now_us = get_redis(get_settings()).time()
        _started = now_s + now_us / 1e6
    except redis.RedisError as e:
        log.warning("no Redis time at start (%s): the previous run's jobs wait for the visibility timeout", e)


@signals.worker_ready.connect
def _start_parent_threads(sender=None, **_kwargs) -> None:
    """``sender`` is the worker's consumer (Celery sends this signal once, when it is ready)."""
    global _heartbeat, _orphans, _model_watch
    settings = get_settings()
    hostname = getattr(sender, "hostname", None) or os.environ.get("SEGCAM_WORKER_NAME", "worker")
    store = ModelStore(settings.model_dir)
    models = runtime.served_models(settings, store)
    payload = {"device": settings.device, "models": models, "pid": os.getpid(), "started_at": time.time()}
    keys = Keys(settings.key_prefix)
    _heartbeat = Heartbeat(get_redis(settings), keys, hostname, payload, settings.worker_heartbeat_s)
    _heartbeat.start()
    queues = tuple(keys.celery_queue(m) for m in models)
    _orphans = OrphanSweep(
        runtime.job_store(settings), settings.orphan_after_s, settings.unacked_restore_interval_s, queues
    )
    if _started is not None:
        _orphans.previous_run = (hostname, _started)
    _orphans.start()
    if not settings.served_models and settings.model_poll_s > 0 and sender is not None:
        _model_watch = ModelWatch(store, models, partial(_serve_new, sender, keys), settings.model_poll_s)
        _model_watch.start()


def _serve_new(consumer, keys: Keys, new: list[str]) -> None:
    """Consume the new models' queues (on the consumer's event loop, which ``call_soon`` wakes
    from this thread; what Celery's ``add_consumer`` control command does), then say so in the
    heartbeat, whose ``models`` is what the gateway's ``/v1/models`` lists, and sweep their
    queues for orphans too."""
    queues = [keys.celery_queue(m) for m in new]
    for q in queues:
        consumer.call_soon(consumer.add_task_queue, q)
    _orphans.queues = (*_orphans.queues, *queues)
    _heartbeat.update(models=[*_heartbeat.description["models"], *new])


@signals.worker_ready.connect
def _freeze_startup_objects(**_kwargs) -> None:
    """The parent imported torch with the task module: its start-up objects are permanent, and
    a full collection walking them (~200 ms) would stall the delivery of the next job."""
    gc.collect()
    gc.freeze()


@signals.worker_shutting_down.connect
def _stop_claiming(**_kwargs) -> None:
    """Warm shutdown: the running task ends after its batch in hand (``worker/shutdown.py``);
    the jobs it did not claim stay queued for the other workers or the next start."""
    shutdown.begin()


@signals.worker_shutdown.connect
def _stop_parent_threads(**_kwargs) -> None:
    if _model_watch is not None:
        _model_watch.stop()
    if _orphans is not None:
        _orphans.stop()
    if _heartbeat is not None:
        _heartbeat.stop()
