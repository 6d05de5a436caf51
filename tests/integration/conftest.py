"""A real stack for the integration tests: API and worker processes on the real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis

from stack.local import LocalStack, free_port
from tests.conftest import ROOT, cleanup_prefix

pytestmark = pytest.mark.integration

UPLOAD_CAP = 2_000_000  # bytes: small, so the over-the-cap tests stay cheap


@pytest.fixture(scope="session")
def stack_prefix(run_prefix, redis_url):
    p = f"{run_prefix}-{uuid.uuid4().hex[:6]}"
    yield p
    cleanup_prefix(redis.Redis.from_url(redis_url), p)


@pytest.fixture(scope="session")
def stack(redis_url, stack_prefix, tmp_path_factory):
    env = {
        "SEGCAM_REDIS_URL": redis_url,
        "SEGCAM_KEY_PREFIX": stack_prefix,
        "SEGCAM_MODEL_DIR": str(ROOT / "models" / "store"),
        "SEGCAM_DEVICE": "cpu",
        "SEGCAM_WORKER_HEARTBEAT_S": "1",
        "SEGCAM_MAX_UPLOAD_BYTES": str(UPLOAD_CAP),
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    s = LocalStack(env=env, workers=1, flower_port=free_port(), log_dir=tmp_path_factory.mktemp("stack-logs"))
    with s:
        yield s
