"""A worker told to use CUDA never falls back to the CPU; the launcher plans one worker per GPU."""

from __future__ import annotations

import pytest

from worker.device import DeviceUnavailable, resolve_device
from worker.launch import plan


def test_cpu_and_auto_without_gpu():
    assert resolve_device("cpu", cuda_count=4) == "cpu"
    assert resolve_device("auto", cuda_count=0) == "cpu"
    assert resolve_device("auto", cuda_count=2) == "cuda:0"


@pytest.mark.parametrize("setting", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_requested_without_gpu_refuses_with_a_clear_message(setting):
    with pytest.raises(DeviceUnavailable, match="Refusing to fall back to the CPU"):
        resolve_device(setting, cuda_count=0)


def test_cuda_index_beyond_visible_devices_refuses():
    with pytest.raises(DeviceUnavailable, match="only 2"):
        resolve_device("cuda:5", cuda_count=2)


def test_garbage_setting_refuses():
    with pytest.raises(DeviceUnavailable):
        resolve_device("tpu", cuda_count=0)


def test_launcher_plans_one_worker_per_gpu_with_distinct_names_and_devices():
    slots = plan("auto", cpu_workers=3, gpu_count=4, host="h", cpu_cores=16)
    assert [s.name for s in slots] == ["gpu0@h", "gpu1@h", "gpu2@h", "gpu3@h"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1", "2", "3"]
    assert all(s.env["SEGCAM_DEVICE"] == "cuda:0" for s in slots)  # each sees only its own GPU


def test_launcher_cpu_workers_split_the_cores():
    slots = plan("cpu", cpu_workers=2, gpu_count=4, host="h", cpu_cores=8)
    assert [s.name for s in slots] == ["cpu0@h", "cpu1@h"]
    assert all(s.env["SEGCAM_TORCH_THREADS"] == "4" and s.env["SEGCAM_DEVICE"] == "cpu" for s in slots)
    assert all(s.env["SEGCAM_CPU_WORKERS"] == "2" for s in slots)  # so each knows its share of the cores


def test_launcher_refuses_cuda_without_gpus():
    with pytest.raises(DeviceUnavailable):
        plan("cuda", cpu_workers=1, gpu_count=0, host="h", cpu_cores=2)
