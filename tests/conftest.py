"""Fixtures shared by every test: a real Redis, a key prefix per run, settings that use them.

Each test run gets its own key prefix (and so its own Celery queue names) on Redis DB 15
of the configured server, so runs never see each other or a developer's data; if no
Redis answers, a private ``redis-server`` is started on a free port.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import redis

from shared.settings import Settings
from stack.local import free_port, redis_answers, start_redis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    url = os.environ.get("SEGCAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if redis_answers(url):
        yield url
        return
    proc = start_redis(free_port(), tmp_path_factory.mktemp("redis"))
    port = proc.args[proc.args.index("--port") + 1]
    yield f"redis://127.0.0.1:{port}/15"
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def cleanup_prefix(client: redis.Redis, prefix: str) -> None:
    for pattern in (f"{prefix}:*", f"{prefix}.*", f"_kombu.binding.{prefix}.*"):
        for key in client.scan_iter(match=pattern, count=1000):
            client.delete(key)


@pytest.fixture
def prefix(run_prefix: str, redis_url: str):
    """A fresh key prefix per test, removed afterwards."""
    p = f"{run_prefix}-{uuid.uuid4().hex[:6]}"
    yield p
    cleanup_prefix(redis.Redis.from_url(redis_url), p)


@pytest.fixture
def settings(redis_url: str, prefix: str) -> Settings:
    return Settings(redis_url=redis_url, key_prefix=prefix, model_dir=ROOT / "models" / "store")


@pytest.fixture
def rclient(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)
