"""The segment task around a Redis outage: run the token again, then give the message back."""

from __future__ import annotations

import pytest
import redis
from billiard.exceptions import TimeLimitExceeded
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


class FlakyStore:
    """A real ``JobStore`` whose first ``failures`` calls of ``claimed`` find Redis gone."""

    def __init__(self, store, failures: int) -> None:
        self.store, self.failures, self.calls = store, failures, 0

    def claimed(self, token: str) -> list[str]:
        self.calls += 1
        if self.calls <= self.failures:
            raise redis.ConnectionError("gone")
        return self.store.claimed(token)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture
def claimed_two(monkeypatch, rclient, prefix):
    """Two jobs claimed by token ``tok``; returns a function that installs a store failing n times."""
    from shared.jobs import JobStore
    from shared.keys import Keys
    from tests.unit.test_jobs import SPEC

    store = JobStore(rclient, Keys(prefix), 60, 60)
    for j in ("a" * 32, "b" * 32):
        store.create(j, SPEC, "q", b"img")
    assert store.claim("q", "tok", "w1", max_jobs=2) == ["a" * 32, "b" * 32]

    def install(failures: int) -> JobStore:
        flaky_store = FlakyStore(store, failures)  # one for the test: its failures count across calls
        monkeypatch.setattr(runtime, "job_store", lambda: flaky_store)
        return store

    return install


def test_a_soft_time_limit_between_jobs_fails_what_the_token_still_claims(flaky, claimed_two):
    """The limit struck outside any job (storing a batch, claiming the next): Celery acks the
    message, so the claimed jobs end as timed out here instead of showing "running" forever."""
    store = claimed_two(0)
    store.fail("a" * 32, "q", "internal_error", "ended before the limit")
    flaky(1, SoftTimeLimitExceeded())
    with pytest.raises(SoftTimeLimitExceeded):
        tasks.run_through_outages("tok", "q", None)
    assert store.get("b" * 32).status.value == "failed" and store.get("b" * 32).error.code == "timeout"
    assert store.get("a" * 32).error.code == "internal_error"  # a final state is never overwritten
    assert store.claimed("tok") == []


def test_a_soft_time_limit_during_a_redis_outage_fails_the_claims_once_redis_is_back(flaky, clock, claimed_two):
    store = claimed_two(2)
    flaky(1, SoftTimeLimitExceeded())
    with pytest.raises(SoftTimeLimitExceeded):
        tasks.run_through_outages("tok", "q", None)
    assert clock.slept == [0.25, 0.5]
    assert [store.get(j).error.code for j in ("a" * 32, "b" * 32)] == ["timeout", "timeout"]
    assert store.claimed("tok") == []


def test_a_soft_time_limit_in_a_long_outage_gives_the_message_back_with_its_claims(flaky, clock, claimed_two):
    """Nothing could fail the claims: the message goes back, and its next run takes them back."""
    store = claimed_two(100)
    flaky(1, SoftTimeLimitExceeded())  # soft 120 s, hard 150 s: half the 30 s between them
    with pytest.raises(Reject) as raised:
        tasks.run_through_outages("tok", "q", None)
    assert raised.value.requeue is True
    assert clock.slept == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]  # 11.75 s; one more 4 s would pass 15
    assert sorted(store.claimed("tok")) == ["a" * 32, "b" * 32]
    assert {store.get(j).status.value for j in ("a" * 32, "b" * 32)} == {"running"}


def test_a_hard_time_limit_during_a_short_outage_still_fails_the_claims(clock, claimed_two):
    store = claimed_two(3)
    tasks.segment.on_failure(TimeLimitExceeded(150), "tok", (), {}, None)
    assert clock.slept == [0.25, 0.5, 1.0]
    assert {store.get(j).error.code for j in ("a" * 32, "b" * 32)} == {"timeout"}
    assert "hard time limit" in store.get("a" * 32).error.message
    assert store.claimed("tok") == []


def test_a_hard_time_limit_in_a_long_outage_gives_up_with_the_claims_held(clock, claimed_two):
    """What then happens to the message, on a real worker: ``tests/integration/test_redis_faults.py``."""
    store = claimed_two(100)
    with pytest.raises(Reject):
        tasks.segment.on_failure(TimeLimitExceeded(150), "tok", (), {}, None)
    assert sum(clock.slept) == 11.75
    assert sorted(store.claimed("tok")) == ["a" * 32, "b" * 32]
