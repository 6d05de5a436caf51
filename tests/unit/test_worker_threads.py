"""The worker's post-processing pool: its size follows torch's unless configured, it is made
(and warmed) in the process that runs the jobs, and a nonsense size is refused at start-up.
The finishing lane (``SEGCAM_OVERLAP``) is on beside a GPU; on the CPU only where torch leaves a
core idle, unless asked for."""

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


CORES = len(os.sched_getaffinity(0))


def test_pool_size_follows_torch_threads_by_default(settings):
    threads = CORES + 1
    overlap, configured, alive = launched(settings, SEGCAM_TORCH_THREADS=str(threads), SEGCAM_POSTPROCESS_THREADS="0")
    assert configured == threads
    assert overlap is False  # the finishing lane: off where torch takes every core
    assert 1 <= alive <= threads  # the warm-up job started the pool's threads


def test_pool_size_can_be_set(settings):
    assert started(settings, SEGCAM_TORCH_THREADS="1", SEGCAM_POSTPROCESS_THREADS="2")[0] == 2


def test_one_thread_makes_no_pool(settings):
    overlap, configured, alive = launched(settings, SEGCAM_TORCH_THREADS="1", SEGCAM_POSTPROCESS_THREADS="0")
    assert (configured, alive) == (1, 0)
    assert overlap is (CORES > 1)  # one torch thread leaves a core for the finishing lane


def test_a_negative_size_is_refused():
    assert Settings(postprocess_threads=0).postprocess_threads == 0  # 0 is "follow torch"
    with pytest.raises(ValidationError, match="postprocess_threads"):
        Settings(postprocess_threads=-1)


def test_the_finishing_lane_can_be_asked_for_on_the_cpu(settings):
    assert launched(settings, SEGCAM_TORCH_THREADS=str(CORES), SEGCAM_OVERLAP="on")[0] is True


def test_the_finishing_lane_is_on_beside_a_gpu_or_an_idle_core_by_default():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert overlap_wanted("auto", gpu, torch_threads=16, cores=16)
    assert overlap_wanted("auto", cpu, torch_threads=1, cores=2)  # one worker, a core to spare
    assert not overlap_wanted("auto", cpu, torch_threads=2, cores=2)  # torch takes every core
    assert not overlap_wanted("auto", cpu, torch_threads=1, cores=2, workers=2)  # the other worker takes it
    assert overlap_wanted("auto", cpu, torch_threads=1, cores=3, workers=2)
    assert overlap_wanted("on", cpu, torch_threads=2, cores=2) and not overlap_wanted("off", gpu)
    with pytest.raises(ValidationError, match="overlap"):
        Settings(overlap="yes")
