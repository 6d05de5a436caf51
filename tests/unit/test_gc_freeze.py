"""Start-up objects are frozen out of the garbage collector in the worker's pool child, its
parent and the API: a full collection over a process with torch loaded walks ~500k objects
(about 200 ms on this machine) and would land on whichever job is in flight."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

WORKER = """
import gc
from worker import runtime
before = gc.get_freeze_count()
runtime.init("freeze-test")
print(before, gc.get_freeze_count())
"""

API = """
import gc
from fastapi.testclient import TestClient
from api.main import create_app
app = create_app()
before = gc.get_freeze_count()
with TestClient(app) as c:
    assert c.get("/healthz").status_code == 200
    print(before, gc.get_freeze_count())
"""

PARENT = """
import gc
from celery import signals
import worker.app
before = gc.get_freeze_count()
signals.worker_ready.send(sender=None)
print(before, gc.get_freeze_count())
"""


def frozen(code: str, settings) -> tuple[int, int]:
    env = {**os.environ, "SEGCAM_REDIS_URL": settings.redis_url, "SEGCAM_KEY_PREFIX": settings.key_prefix,
           "SEGCAM_DEVICE": "cpu"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = map(int, out.stdout.split()[-2:])
    return before, after


def test_the_pool_child_freezes_what_it_loaded(settings):
    before, after = frozen(WORKER, settings)
    assert before == 0 and after > 100_000  # torch, the models, Celery


def test_the_worker_parent_freezes_at_ready(settings):
    before, after = frozen(PARENT, settings)
    assert before == 0 and after > 100_000


def test_the_api_freezes_at_start_up(settings):
    before, after = frozen(API, settings)
    assert before == 0 and after > 10_000
