"""Per-process worker state, built in the pool child after the fork.

The model and everything that may touch CUDA is created here, in the child that runs
jobs, never in the Celery parent: CUDA state does not survive a fork.
"""

from __future__ import annotations

import gc
import io
import logging
import os

import torch
from PIL import Image

from shared.artifacts import ArtifactStore
from shared.jobs import JobStore
from shared.keys import Keys
from shared.model_store import ModelStore
from shared.redis_conn import get_redis
from shared.schemas import Method
from shared.settings import Settings, get_settings
from worker import render, shutdown
from worker.device import resolve_device
from worker.linger import QueueWatch
from worker.loader import LoadedModel, ModelCache
from worker.model_watch import servable
from worker.pipeline import Item, Pipeline, default_threads
from worker.runner import JobRunner, software_versions

log = logging.getLogger("segcam.worker")

_runner: JobRunner | None = None


def served_models(settings: Settings, store: ModelStore) -> list[str]:
    """The models named by ``SEGCAM_WORKER_MODELS``, or else every servable model in the store
    now (the parent's ``ModelWatch`` adds the ones imported later to what it consumes)."""
    return settings.served_models or servable(store)


def warm_up(model: LoadedModel, threads: int = 1) -> None:
    """One throwaway job, so the first real job does not pay for lazy initialisation (the
    post-processing threads included)."""
    h, w = model.manifest.input_size
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (128, 128, 128)).save(buf, "PNG")
    Pipeline(model, threads).run([Item("warm-up", buf.getvalue())], Method.gradcam)


def overlap_wanted(
    setting: str, device: torch.device, torch_threads: int = 0, cores: int = 0, workers: int = 1
) -> bool:
    """``auto``: beside a GPU, where the CPU half would otherwise leave the device idle. On the
    CPU only where torch leaves a core idle (``workers`` CPU workers on this host, each with
    ``torch_threads``, fewer than ``cores``): there the lane hides the batch's finish and its
    Redis round trips behind the next forward pass; where torch takes every core, the lane's
    thread competes with it (docs/performance.md, eighth round)."""
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return True
    return torch_threads > 0 and torch_threads * max(1, workers) < cores


def init(worker_name: str, settings: Settings | None = None) -> JobRunner:
    """Build the runner and warm the models this worker serves (their default versions)."""
    global _runner
    settings = settings or get_settings()
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    device = torch.device(resolve_device(settings.device))
    client = get_redis(settings)
    keys = Keys(settings.key_prefix)
    store = ModelStore(settings.model_dir, cache_ttl_s=settings.model_store_cache_s)
    cache = ModelCache(
        store,
        device,
        capacity=settings.model_cache_size,
        channels_last=settings.channels_last,
        bf16_backbone=settings.bf16_backbone,
    )
    models = served_models(settings, store)
    threads = settings.postprocess_threads or default_threads(device)
    for name in models:
        manifest = store.resolve(name)
        warm_up(cache.get(manifest), threads)
        log.info("loaded %s on %s", manifest.ref, device)
    software_versions()  # every result records them: read now, not in the first job
    _runner = JobRunner(
        jobs=job_store(settings),
        artifacts=ArtifactStore(client, keys, settings.artifact_ttl_s),
        store=store,
        cache=cache,
        worker=worker_name,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        drain_s=settings.drain_s,
        linger_ms=settings.linger_ms,
        watch=queue_watch(settings, client, keys, store, models),
        max_deliveries=settings.max_deliveries,
        fault_injection=settings.fault_injection,
        postprocess_threads=threads,
        overlay=render.Overlay(settings.overlay_format, settings.overlay_jpeg_quality),
        overlap=overlap_wanted(
            settings.overlap, device, torch.get_num_threads(), len(os.sched_getaffinity(0)), settings.cpu_workers
        ),
        stopping=shutdown.under_way,
    )
    # Everything loaded so far (torch, the models, Celery) lives as long as the process. Left
    # to the collector, it makes each full collection walk ~500k objects: about 200 ms, paid
    # by whichever job is running when one triggers (rare in steady state, but a stall when it
    # comes). Frozen, they are skipped.
    gc.collect()
    gc.freeze()
    return _runner


def job_store(settings: Settings | None = None) -> JobStore:
    settings = settings or get_settings()
    return JobStore(
        get_redis(settings),
        Keys(settings.key_prefix),
        settings.job_ttl_s,
        settings.upload_ttl_s,
        # As long as the records the claims name: a token's message can come back long after
        # its claim (every worker down until well past the visibility timeout), and its claims
        # are what it takes back. A finished job leaves the set, so a set outlives its run
        # only when its jobs did not finish.
        claims_ttl_s=settings.job_ttl_s,
    )


def queue_channels(keys: Keys, models: list[str]) -> dict[str, str]:
    """Each served model's Celery queue -> the pub/sub channel its submissions announce on."""
    return {keys.celery_queue(m): keys.queue_events(keys.celery_queue(m)) for m in models}


def queue_watch(settings: Settings, client, keys: Keys, store: ModelStore, models: list[str]) -> QueueWatch:
    """What a lingering task listens to: the served models' queues, and, for a worker that
    serves every model, those of models imported later too (its parent consumes them within
    ``SEGCAM_MODEL_POLL_S``), so a job of one ends a wait or a drain as any other queue's does.
    Store reads are cached for ``SEGCAM_MODEL_STORE_CACHE_S``."""

    def follow() -> dict[str, str]:
        return queue_channels(keys, served_models(settings, store))

    return QueueWatch(client, queue_channels(keys, models), None if settings.served_models else follow)


def queue_for(model: str) -> str:
    return Keys(get_settings().key_prefix).celery_queue(model)


def runner() -> JobRunner:
    if _runner is None:  # e.g. the solo pool, where worker_process_init has not fired yet
        return init("worker")
    return _runner
