"""benchmarks.lua_blob's pub/sub table times delivery of the very bytes published, on each
subscriber it compares, and refuses a subscriber that hands back anything else."""

from __future__ import annotations

import os

import pytest
import redis

from benchmarks.lua_blob import delivery_us, raw_receiver, redis_py_receiver


@pytest.fixture
def channel(prefix: str) -> str:
    return f"{prefix}:lua-blob-test"


@pytest.mark.parametrize("kind", ["default", "identity", "raw"])
def test_each_subscriber_receives_the_published_bytes(rclient: redis.Redis, channel: str, kind: str):
    kw = rclient.connection_pool.connection_kwargs
    if kind == "raw":
        receive, close = raw_receiver(kw.get("host", "127.0.0.1"), kw.get("port", 6379), kw.get("db", 0), channel)
    else:
        extra = {"push_handler_func": lambda m: m} if kind == "identity" else {}
        receive, close = redis_py_receiver(rclient, channel, **extra)
    try:
        blob = os.urandom(200_000)  # several socket reads
        assert delivery_us(rclient, blob, receive, channel, n=3) > 0
        rclient.publish(channel, b"second")
        assert receive() == b"second"  # nothing of the earlier messages left over
    finally:
        close()


def test_a_subscriber_that_returns_other_bytes_is_refused(rclient: redis.Redis, channel: str):
    receive, close = redis_py_receiver(rclient, channel)
    try:
        with pytest.raises(AssertionError, match="received 3 bytes"):
            delivery_us(rclient, b"x" * 10, lambda: receive()[:3], channel, n=1)
    finally:
        close()
