"""The worker's post-processing pool: its size follows torch's unless configured, it is made
(and warmed) in the process that runs the jobs, and a nonsense size is refused at start-up.
The finishing lane (``SEGCAM_OVERLAP``) is on beside a GPU, off on the CPU unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from shared.settings import Settings
from tests.conftest import ROOT
from worker.runtime import overlap_wanted

INIT = """
import threading
from worker import runtime
r = runtime.init("threads-test")
print(r.overlap, r.postprocess_threads, sum(t.name.startswith("postprocess") for t in threading.enumerate()))
"""


def started(settings, **env: str) -> tuple[int, int]:
    return launched(settings, **env)[1:]


def launched(settings, **env: str) -> tuple[bool, int, int]:
    full = {**os.environ, "SEGCAM_REDIS_URL": settings.redis_url, "SEGCAM_KEY_PREFIX": settings.key_prefix,
            "SEGCAM_DEVICE": "cpu", **env}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", INIT], cwd=ROOT, env=full, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    overlap, configured, alive = out.stdout.split()[-3:]
    return overlap == "True", int(configured), int(alive)


def test_pool_size_follows_torch_threads_by_default(settings):
    overlap, configured, alive = launched(settings, SEGCAM_TORCH_THREADS="3", SEGCAM_POSTPROCESS_THREADS="0")
    assert configured == 3
    assert overlap is False  # the finishing lane: off on the CPU unless asked for
    assert 1 <= alive <= 3  # the warm-up job started the pool's threads


def test_pool_size_can_be_set(settings):
    assert started(settings, SEGCAM_TORCH_THREADS="1", SEGCAM_POSTPROCESS_THREADS="2")[0] == 2


def test_one_thread_makes_no_pool(settings):
    assert started(settings, SEGCAM_TORCH_THREADS="1", SEGCAM_POSTPROCESS_THREADS="0") == (1, 0)


def test_a_negative_size_is_refused():
    assert Settings(postprocess_threads=0).postprocess_threads == 0  # 0 is "follow torch"
    with pytest.raises(ValidationError, match="postprocess_threads"):
        Settings(postprocess_threads=-1)


def test_the_finishing_lane_can_be_asked_for_on_the_cpu(settings):
    assert launched(settings, SEGCAM_TORCH_THREADS="1", SEGCAM_OVERLAP="on")[0] is True


def test_the_finishing_lane_is_on_beside_a_gpu_by_default():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert overlap_wanted("auto", gpu) and not overlap_wanted("auto", cpu)
    assert overlap_wanted("on", cpu) and not overlap_wanted("off", gpu)
    with pytest.raises(ValidationError, match="overlap"):
        Settings(overlap="yes")
