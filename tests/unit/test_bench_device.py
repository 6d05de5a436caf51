"""The benchmark runs where it is told (a GPU asked for and absent is an error, never a quiet
CPU run), reads a worker's GPU memory from the driver, and checks the GPU targets only on a GPU."""

from __future__ import annotations

import subprocess

import pytest

from benchmarks import run
from benchmarks.report import markdown
from worker import device


def test_auto_takes_the_first_gpu_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(device, "count_cuda_devices", lambda: 2)
    assert run.bench_device("auto") == "cuda:0"
    assert run.bench_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(device, "count_cuda_devices", lambda: 0)
    assert run.bench_device("auto") == "cpu"
    assert run.bench_device("cpu") == "cpu"


def test_a_missing_gpu_stops_the_benchmark(monkeypatch):
    monkeypatch.setattr(device, "count_cuda_devices", lambda: 0)
    with pytest.raises(SystemExit, match="no GPU"):
        run.bench_device("cuda:0")
    monkeypatch.setattr(device, "count_cuda_devices", lambda: 1)
    with pytest.raises(SystemExit, match="only 1 CUDA device"):
        run.bench_device("cuda:1")


def test_gpu_memory_is_read_for_the_worker_process(monkeypatch):
    listing = "4242, 1536\n77, 900\n"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, listing, ""))
    assert run.gpu_memory_mb(4242) == 1536.0
    assert run.gpu_memory_mb(5) is None  # not on the GPU: no figure rather than someone else's

    def no_driver(*a, **k):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(subprocess, "run", no_driver)
    assert run.gpu_memory_mb(4242) is None


def batching(seg: list[float]) -> list[dict]:
    lat = {"p50": 1.0, "p99": 2.0}
    return [
        {"batch": b, "limit": {"images_per_s": t}, "segcam": {"throughput_per_s": t, "mean_batch": b,
                                                             "latency_ms": lat, "clients": 2 * b + 2}}
        for b, t in zip((1, 2, 4, 8), seg, strict=True)
    ]  # fmt: skip


def memory(gpu: list[tuple[int, float]] | None) -> dict:
    out = {"jobs": 400, "samples_mb": [(200, 700.0), (400, 701.0)], "start_mb": 700.0, "end_mb": 701.0,
           "drift_pct": 0.14}  # fmt: skip
    if gpu is not None:
        start, end = gpu[0][1], gpu[-1][1]
        out["gpu"] = {"samples_mb": gpu, "start_mb": start, "end_mb": end, "drift_pct": 100 * (end - start) / start}
    return out


def targets(md: str) -> dict[str, str]:
    rows = md.split("## Targets")[1].strip().splitlines()[2:]
    return {cells[1].strip(): cells[-2].strip() for cells in (r.split("|") for r in rows)}


def test_gpu_targets_are_checked_on_a_gpu_run():
    sections = {"batching": batching([50.0, 80.0, 110.0, 120.0]), "memory": memory([(200, 1500.0), (400, 1500.0)])}
    out = {"machine": {"device": "cuda:0 NVIDIA H100"}, "sections": sections}
    got = targets(markdown(out))
    assert got["GPU: batch 8 over batch 1, realistic model, fp32 CAM (segcam)"] == "met"
    assert got["worker GPU memory drift over the run"] == "met"
    out["sections"] = {"batching": batching([50.0, 60.0, 70.0, 90.0]), "memory": memory([(200, 1500.0), (400, 1700.0)])}
    got = targets(markdown(out))
    assert got["GPU: batch 8 over batch 1, realistic model, fp32 CAM (segcam)"] == "**missed**"
    assert got["worker GPU memory drift over the run"] == "**missed**"


def test_a_cpu_run_does_not_claim_the_gpu_targets():
    out = {"machine": {"device": "cpu"}, "sections": {"batching": batching([5.0, 5.0, 5.0, 5.0]),
                                                      "memory": memory(None)}}  # fmt: skip
    got = targets(markdown(out))
    assert not any("GPU" in name for name in got)
    assert got["worker RSS drift over the run"] == "met"
