"""The orphan sweep's thread (worker/orphans.py) on the real Redis; the store's side of it is in
``tests/unit/test_jobs.py``, a real worker's in ``tests/integration/test_faults.py``."""

from __future__ import annotations

import base64
import json
import logging
import time

import redis

from shared.celery_app import TASK_SEGMENT
from shared.jobs import JobStore
from shared.keys import Keys
from shared.schemas import JobStatus
from stack.local import free_port
from tests.unit.test_jobs import SPEC
from worker.orphans import OrphanSweep


def _claimed_job(rclient, prefix: str) -> tuple[JobStore, str, str]:
    store = JobStore(rclient, Keys(prefix), job_ttl_s=60, upload_ttl_s=60)
    queue, job_id = store.keys.celery_queue("shapes"), "f" * 32
    store.create(job_id, SPEC, queue, b"img")
    assert store.claim(queue, "tok", "w1") == [job_id]
    return store, queue, job_id


def run_until_queued(sweep: OrphanSweep, store: JobStore, job_id: str, what: str) -> None:
    """Run the sweep's thread until it has put the job back (5 s at most), then stop it."""
    sweep.start()
    try:
        deadline = time.monotonic() + 5
        while store.get(job_id).status is not JobStatus.queued:
            assert time.monotonic() < deadline, what
            time.sleep(0.02)
    finally:
        sweep.stop()
        sweep.join(timeout=2)


def test_the_sweep_requeues_with_a_fresh_token_for_the_jobs_model(rclient, prefix):
    store, queue, job_id = _claimed_job(rclient, prefix)
    sweep = OrphanSweep(store, older_than_s=-1, interval_s=60)
    assert sweep.sweep() == [job_id]
    (raw,) = rclient.lrange(queue, 0, -1)
    msg = json.loads(raw)
    body = json.loads(base64.b64decode(msg["body"]))
    assert msg["headers"]["task"] == TASK_SEGMENT and body[1] == {"model": "shapes", "job_id": job_id}
    assert msg["headers"]["id"] not in (job_id, "tok")  # a token of its own: the old one's claims are not its
    assert msg["properties"]["delivery_info"]["routing_key"] == queue
    assert store.get(job_id).status is JobStatus.queued


def test_the_thread_sweeps_every_interval_until_stopped(rclient, prefix):
    store, _, job_id = _claimed_job(rclient, prefix)
    sweep = OrphanSweep(store, older_than_s=0.2, interval_s=0.05)
    run_until_queued(sweep, store, job_id, "never swept")
    assert not sweep.is_alive()


def test_a_sweep_that_cannot_reach_redis_logs_and_waits_for_the_next(prefix, caplog):
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    sweep = OrphanSweep(JobStore(dead, Keys(prefix), 60, 60), older_than_s=1, interval_s=60)
    with caplog.at_level(logging.WARNING, logger="segcam.worker"):
        assert sweep.sweep() == []
    assert "orphan sweep failed" in caplog.text


def test_the_sweep_gives_its_queues_queued_jobs_the_messages_they_lack(rclient, prefix, caplog):
    store = JobStore(rclient, Keys(prefix), job_ttl_s=60, upload_ttl_s=60)
    queue = store.keys.celery_queue("shapes")
    store.create("a" * 32, SPEC, queue, b"img")  # no message: as if a worker's BRPOP lost it
    with caplog.at_level(logging.WARNING, logger="segcam.worker"):
        assert OrphanSweep(store, older_than_s=60, interval_s=60, queues=(queue,)).sweep() == []
    (raw,) = rclient.lrange(queue, 0, -1)
    assert json.loads(base64.b64decode(json.loads(raw)["body"]))[1] == {"model": "shapes", "job_id": "a" * 32}
    assert "had no message" in caplog.text
    assert OrphanSweep(store, older_than_s=60, interval_s=60).sweep() == [] and rclient.llen(queue) == 1


def test_a_restarted_worker_takes_back_only_what_its_previous_run_left_running(rclient, prefix, caplog):
    """Same name, claimed before this run's start: the previous run's, which died. Another
    worker's jobs, and this run's own claims (after its start), are not touched."""
    store = JobStore(rclient, Keys(prefix), job_ttl_s=60, upload_ttl_s=60)
    queue = store.keys.celery_queue("shapes")
    for job_id in ("a" * 32, "b" * 32, "c" * 32):
        store.create(job_id, SPEC, queue, b"img")
    assert store.claim(queue, "old-run", "gpu0@host") == ["a" * 32]
    assert store.claim(queue, "other", "gpu1@host") == ["b" * 32]
    now_s, now_us = rclient.time()
    started = now_s + now_us / 1e6  # this run starts here
    time.sleep(0.01)
    assert store.claim(queue, "this-run", "gpu0@host") == ["c" * 32]
    rclient.delete(queue)  # the gateway's three messages: only the new ones below count
    sweep = OrphanSweep(store, older_than_s=900, interval_s=60)
    with caplog.at_level(logging.WARNING, logger="segcam.worker"):
        assert sweep.take_back("gpu0@host", started) == ["a" * 32]
    assert "left running by this worker's previous run (gpu0@host)" in caplog.text
    assert [store.get(j).status for j in ("a" * 32, "b" * 32, "c" * 32)] == [
        JobStatus.queued, JobStatus.running, JobStatus.running]  # fmt: skip
    assert rclient.llen(queue) == 1  # a fresh message for it
    assert store.claim(queue, "next", "gpu0@host") == ["a" * 32]  # claimable again, at its old place
    assert sweep.take_back("gpu0@host", started) == []  # reclaimed after the start: this run's now


def test_the_thread_takes_back_the_previous_runs_jobs_before_its_first_interval(rclient, prefix):
    store, _, job_id = _claimed_job(rclient, prefix)
    now_s, now_us = rclient.time()
    sweep = OrphanSweep(store, older_than_s=900, interval_s=60)
    sweep.previous_run = ("w1", now_s + now_us / 1e6)
    run_until_queued(sweep, store, job_id, "not taken back at start")  # long before its 60 s interval
