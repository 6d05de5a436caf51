"""The queue watch a lingering task listens with, on the real Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from pydantic import ValidationError

from shared.jobs import JobStore
from shared.keys import Keys
from shared.schemas import ImageInfo, JobSpec, Method
from shared.settings import Settings
from stack.local import free_port
from worker.linger import QueueWatch

SPEC = JobSpec(model="shapes", model_version="1", method=Method.gradcam,
               image=ImageInfo(format="PNG", width=8, height=8, bytes=1))  # fmt: skip


def later(f, delay: float = 0.1) -> threading.Thread:
    t = threading.Timer(delay, f)
    t.start()
    return t


def test_a_job_queued_on_the_watched_queue_is_heard_with_its_id(rclient, prefix):
    keys, jobs = Keys(prefix), JobStore(rclient, Keys(prefix), 60, 60)
    watch = QueueWatch(rclient, {"qa": keys.queue_events("qa"), "qb": keys.queue_events("qb")})
    assert watch.start() and watch.listening
    later(lambda: jobs.create("a" * 32, SPEC, "qa", b"img"))
    assert watch.wait("qa", time.monotonic() + 10) == "a" * 32
    later(lambda: jobs.create("b" * 32, SPEC, "qb", b"img"))
    started = time.monotonic()
    assert watch.wait("qa", started + 10) is None  # the parent delivers that one: stop waiting at once
    assert time.monotonic() - started < 5
    watch.stop()
    assert not watch.listening


def test_moved_positions_and_timeouts_are_not_jobs(rclient, prefix):
    keys = Keys(prefix)
    watch = QueueWatch(rclient, {"qa": keys.queue_events("qa")})
    assert watch.start()
    later(lambda: rclient.publish(keys.queue_events("qa"), "moved"), 0.05)
    started = time.monotonic()
    assert watch.wait("qa", started + 0.4) is None
    assert time.monotonic() - started >= 0.39  # waited its time out, ignoring the "moved"
    watch.stop()


def test_after_stop_nothing_is_reported_from_while_it_did_not_listen(rclient, prefix):
    keys, jobs = Keys(prefix), JobStore(rclient, Keys(prefix), 60, 60)
    watch = QueueWatch(rclient, {"qa": keys.queue_events("qa")})
    assert watch.start()
    watch.stop()
    jobs.create("c" * 32, SPEC, "qa", b"img")  # found by the runner's look after start, not heard
    assert watch.start()
    assert watch.wait("qa", time.monotonic() + 0.3) is None
    later(lambda: jobs.create("d" * 32, SPEC, "qa", b"img"))
    assert watch.wait("qa", time.monotonic() + 10) == "d" * 32  # listening again after a restart
    watch.stop()


def test_an_unreachable_redis_means_no_lingering_not_an_error():
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    watch = QueueWatch(client, {"qa": "chan"})
    assert watch.start() is False and not watch.listening
    assert watch.wait("qa", time.monotonic() + 1) is None
    watch.stop()


def test_a_task_drains_and_lingers_only_within_a_quarter_of_its_time_limit():
    """A job claimed by a continuing task runs under that task's limits, which started with it."""
    with pytest.raises(ValidationError, match="drain_s"):
        Settings(drain_s=2, task_soft_time_limit_s=4, task_time_limit_s=6)
    assert Settings(drain_s=1, task_soft_time_limit_s=4, task_time_limit_s=6).drain_s == 1
    Settings()  # the defaults: 2 s of 120
