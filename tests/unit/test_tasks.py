"""The segment task around a Redis outage: run the token again, then give the message back."""

from __future__ import annotations

import pytest
import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded

from shared.settings import get_settings
from worker import runtime, tasks


class FlakyRunner:
    """Fails ``failures`` times with ``error``, then runs the token."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, []

    def run_token(self, token: str, queue: str, hint: str | None = None) -> dict[str, str]:
        self.calls.append((token, queue, hint))
        if len(self.calls) <= self.failures:
            raise self.error
        return {"j1": "succeeded"}


class Clock:
    """Stands in for the ``time`` module inside ``worker.tasks`` only: sleeping advances it."""

    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(tasks, "time", c)
    return c


@pytest.fixture
def flaky(monkeypatch, clock):
    def install(failures: int, error: Exception, soft_s: int = 120) -> FlakyRunner:
        runner = FlakyRunner(failures, error)
        monkeypatch.setattr(runtime, "runner", lambda: runner)
        monkeypatch.setenv("SEGCAM_TASK_SOFT_TIME_LIMIT_S", str(soft_s))
        monkeypatch.setenv("SEGCAM_DRAIN_S", "1")
        get_settings.cache_clear()
        return runner

    yield install
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "error",
    [redis.ConnectionError("gone"), redis.TimeoutError("slow"), redis.exceptions.OutOfMemoryError("OOM")],
    ids=["unreachable", "timeout", "memory-full"],
)
def test_a_redis_outage_runs_the_same_token_again(flaky, clock, error):
    runner = flaky(2, error)
    assert tasks.run_through_outages("tok", "q", "j1") == {"j1": "succeeded"}
    assert runner.calls == [("tok", "q", "j1")] * 3  # the same token: it takes back its own claims
    assert clock.slept == [0.25, 0.5]


def test_past_half_the_soft_limit_the_message_goes_back_to_the_queue(flaky, clock):
    runner = flaky(100, redis.ConnectionError("gone"), soft_s=8)
    with pytest.raises(Reject) as raised:
        tasks.run_through_outages("tok", "q", None)
    assert raised.value.requeue is True
    # Retried while the next try still starts within 4 s (half of 8): 0.25 + 0.5 + 1 + 2 = 3.75 s.
    assert clock.slept == [0.25, 0.5, 1.0, 2.0] and len(runner.calls) == 5


def test_any_other_error_is_not_retried(flaky):
    runner = flaky(1, redis.ResponseError("ERR wrong number of arguments"))
    with pytest.raises(redis.ResponseError):
        tasks.run_through_outages("tok", "q", None)
    assert len(runner.calls) == 1


def test_a_soft_time_limit_between_jobs_fails_what_the_token_still_claims(flaky, monkeypatch, rclient, prefix):
    """The limit struck outside any job (storing a batch, claiming the next): Celery acks the
    message, so the claimed jobs end as timed out here instead of showing "running" forever."""
    from shared.jobs import JobStore
    from shared.keys import Keys
    from tests.unit.test_jobs import SPEC

    store = JobStore(rclient, Keys(prefix), 60, 60)
    monkeypatch.setattr(runtime, "job_store", lambda: store)
    for j in ("a" * 32, "b" * 32):
        store.create(j, SPEC, "q", b"img")
    assert store.claim("q", "tok", "w1", max_jobs=2) == ["a" * 32, "b" * 32]
    store.fail("a" * 32, "q", "internal_error", "ended before the limit")
    flaky(1, SoftTimeLimitExceeded())
    with pytest.raises(SoftTimeLimitExceeded):
        tasks.run_through_outages("tok", "q", None)
    assert store.get("b" * 32).status.value == "failed" and store.get("b" * 32).error.code == "timeout"
    assert store.get("a" * 32).error.code == "internal_error"  # a final state is never overwritten
    assert store.claimed("tok") == []
