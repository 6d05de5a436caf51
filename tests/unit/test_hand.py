"""A job queued on an empty queue while a task lingers for it is handed to that task by the
create itself (``JobStore.offer``, ``_CREATE``), on the real Redis."""

from __future__ import annotations

import threading
import time

import pytest

from shared.jobs import JobStore
from shared.keys import Keys
from shared.schemas import ImageInfo, JobSpec, JobStatus, Method
from worker.linger import QueueWatch

SPEC = JobSpec(model="shapes", model_version="1", method=Method.gradcam,
               image=ImageInfo(format="PNG", width=8, height=8, bytes=1))  # fmt: skip
UPLOAD = b"\x89PNG" + bytes(range(256)) * 500  # 128 KB, every byte value


@pytest.fixture
def parts(rclient, prefix):
    keys = Keys(prefix)
    jobs = JobStore(rclient, keys, 60, 60)
    q = keys.celery_queue("shapes")  # under the test's prefix: its Celery list is removed with it
    watch = QueueWatch(rclient, {q: keys.queue_events(q)}, hand=keys.hand("w1"))
    assert watch.start()
    yield keys, jobs, watch, q
    watch.stop()


def test_a_job_on_an_empty_queue_goes_to_the_waiting_task_claimed_with_its_upload(parts, rclient):
    keys, jobs, watch, Q = parts
    jobs.offer(Q, "tok", "w1", 10)
    created = jobs.create("a" * 32, SPEC, Q, UPLOAD, message=b"msg")
    assert created.position == 0
    # Claimed for the task as its own claim would: a crash takes it back with the token's claims.
    rec = jobs.get("a" * 32)
    assert (rec.status, rec.token, rec.worker, rec.stage, rec.deliveries) == (JobStatus.running, "tok", "w1",
                                                                               "preprocess", 1)  # fmt: skip
    assert rclient.smembers(keys.claims("tok")) == {b"a" * 32}
    assert rclient.zscore(keys.running(), "a" * 32) is not None
    assert rclient.zcard(keys.queued(Q)) == 0 and rclient.llen(Q) == 0  # no message: no task runs empty for it
    assert rclient.get(keys.upload("a" * 32)) == UPLOAD  # kept until the job ends, for a retry
    got = watch.wait(Q, time.monotonic() + 5, "tok")
    assert got.job_ids == ["a" * 32] and not got.reclaimed
    hrec, upload = got.loaded["a" * 32]
    assert upload == UPLOAD and hrec.token == "tok" and hrec.spec == SPEC and hrec.status is JobStatus.running
    assert not jobs.withdraw(Q, "tok", "w1")  # the offer was used: one job per offer


def test_one_offer_takes_one_job_and_the_next_is_queued_with_its_message(parts, rclient):
    _keys, jobs, _watch, Q = parts
    jobs.offer(Q, "tok", "w1", 10)
    jobs.create("a" * 32, SPEC, Q, UPLOAD, message=b"msg")
    assert jobs.create("b" * 32, SPEC, Q, UPLOAD, message=b"msg").position == 0
    assert jobs.get("b" * 32).status is JobStatus.queued and rclient.llen(Q) == 1


def test_no_hand_while_jobs_wait_ahead_or_once_the_offer_ran_out(parts, rclient):
    """Queue order first: a job behind others is never handed past them."""
    keys, jobs, _watch, Q = parts
    jobs.create("a" * 32, SPEC, Q, UPLOAD, message=b"msg")
    jobs.offer(Q, "tok", "w1", 10)
    assert jobs.create("b" * 32, SPEC, Q, UPLOAD, message=b"msg").position == 1
    assert jobs.get("b" * 32).status is JobStatus.queued and rclient.llen(Q) == 2
    assert jobs.withdraw(Q, "tok", "w1")  # still there: nothing was handed

    rclient.delete(keys.queued(Q), Q)
    jobs.offer(Q, "tok2", "w1", 0.05)
    time.sleep(0.15)
    jobs.create("c" * 32, SPEC, Q, UPLOAD, message=b"msg")
    assert jobs.get("c" * 32).status is JobStatus.queued and rclient.llen(Q) == 1
    assert jobs.withdraw(Q, "tok2", "w1")  # ran out, not taken: the task knows nothing came


def test_no_hand_without_a_celery_message_or_on_another_queue(parts, rclient):
    _keys, jobs, _watch, Q = parts
    jobs.offer(Q, "tok", "w1", 10)
    jobs.create("a" * 32, SPEC, Q + "-other", UPLOAD, message=b"msg")
    jobs.create("b" * 32, SPEC, Q, UPLOAD)  # no message: a caller that queues without Celery
    assert jobs.get("a" * 32).status is JobStatus.queued and jobs.get("b" * 32).status is JobStatus.queued
    assert jobs.withdraw(Q, "tok", "w1")


def test_an_offer_left_by_a_worker_that_died_is_swept_by_later_creates(parts, rclient):
    keys, jobs, _watch, Q = parts
    rclient.zadd(keys.lingering(Q), {"dead w0": 1})  # a minute and more in the past (Redis ms)
    jobs.create("a" * 32, SPEC, Q, UPLOAD, message=b"msg")
    assert jobs.get("a" * 32).status is JobStatus.queued
    assert rclient.zcard(keys.lingering(Q)) == 0


def test_a_hand_for_another_token_is_skipped_with_its_upload(parts, rclient):
    """An earlier task of this worker whose wait ended as the hand came took its job back
    already (``JobRunner._linger``); its messages must not be read as this task's job."""
    _keys, jobs, watch, Q = parts
    jobs.offer(Q, "old", "w1", 10)
    jobs.create("a" * 32, SPEC, Q, UPLOAD, message=b"msg")
    jobs.withdraw(Q, "old", "w1")
    jobs.offer(Q, "new", "w1", 10)
    threading.Timer(0.2, lambda: jobs.create("b" * 32, SPEC, Q, b"second", message=b"msg")).start()
    got = watch.wait(Q, time.monotonic() + 5, "new")
    assert got.job_ids == ["b" * 32] and got.loaded["b" * 32][1] == b"second"


def test_a_hand_that_ended_with_the_wait_is_still_received(parts):
    _keys, jobs, watch, Q = parts
    jobs.offer(Q, "tok", "w1", 10)
    jobs.create("a" * 32, SPEC, Q, UPLOAD, message=b"msg")
    assert not jobs.withdraw(Q, "tok", "w1")  # the wait ended without reading it: taken already
    got = watch.handed("tok", timeout=5)
    assert got.job_ids == ["a" * 32] and got.loaded["a" * 32][1] == UPLOAD
