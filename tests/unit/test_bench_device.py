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


def test_the_lane_table_compares_each_batch_size_with_its_own_lane_off_run():
    def row(b: int, lane: bool, lim: float | None, seg: float, workers: int = 1) -> dict:
        seg_out = {"throughput_per_s": seg, "latency_ms": {"p50": 1.0, "p99": 2.0}, "clients": 2 * b + 2}
        limit = {"images_per_s": lim} if lim else None
        return {"batch": b, "overlap": lane, "limit": limit, "segcam": seg_out, "workers": workers}

    rows = [row(1, False, 10.0, 9.0), row(1, True, 15.0, 13.5), row(8, False, 20.0, 18.0), row(8, True, 30.0, 36.0),
            row(1, False, None, 8.0, workers=2), row(1, True, None, 7.2, workers=2)]  # fmt: skip
    md = markdown({"machine": {"device": "cuda:0 NVIDIA H100"}, "overlap": True, "sections": {"overlap": rows}})
    assert "finishing lane (`SEGCAM_OVERLAP`): on" in md
    table = [r.split("|")[1:-1] for r in md.split("## Finishing lane")[1].splitlines() if r[:4] in ("| 1 ", "| 2 ")]
    got = [tuple(c[i].strip() for i in (0, 1, 2, 4, 6)) for c in table]
    assert got == [("1", "1", "off", "1.00", "1.00"), ("1", "1", "on", "1.50", "1.50"),
                   ("1", "8", "off", "1.00", "1.00"), ("1", "8", "on", "1.50", "2.00"),
                   ("2", "1", "off", "-", "1.00"), ("2", "1", "on", "-", "0.90")]  # fmt: skip


def test_the_in_process_limit_runs_the_lane_as_a_worker_does(monkeypatch):
    """With the lane, each batch's finish runs on another thread while the next computes; the
    loop ends only when the last batch is finished."""
    from tests.conftest import ROOT
    from worker.pipeline import Pipeline

    real = Pipeline.finish
    threads, finished = set(), []

    def finish(self, computed, on_stage=None):
        import threading

        threads.add(threading.current_thread() is threading.main_thread())
        out = real(self, computed, on_stage)
        finished.append(len(out))
        return out

    monkeypatch.setattr(Pipeline, "finish", finish)
    imgs = run.images((128, 96), n=1)
    got = run.limit(ROOT / "models" / "store", "shapes", imgs, 0.5, batch=2, overlap=True)
    assert got["images"] >= 2 and sum(finished) == got["images"] + 1  # + the reference run's image
    assert threads == {True, False}  # the reference on this thread, the loop's batches on the lane's


def test_a_run_records_the_commit_it_measured(tmp_path):
    """A quoted figure names its code, so it can be rerun on it (``overhead_ab`` takes a commit)."""
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert run.code_version(tmp_path) == {"commit": head, "local_changes": False}
    (tmp_path / "untracked.txt").write_text("results\n")  # a run's own output is not a code change
    assert run.code_version(tmp_path)["local_changes"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert run.code_version(tmp_path) == {"commit": head, "local_changes": True}
    assert f"Code: commit {head} with local changes to tracked files." in markdown(
        {"code": run.code_version(tmp_path), "sections": {}}
    )
    assert run.code_version(tmp_path / "nowhere") == {"commit": None, "local_changes": None}
    assert "Code: unknown (not a git checkout)." in markdown({"code": {"commit": None}, "sections": {}})


def test_the_memory_line_names_the_jobs_its_baseline_was_taken_after():
    short = {"jobs": 104, "samples_mb": [(24, 650.0), (48, 651.0), (96, 652.0)], "start_after": 24,
             "start_mb": 650.0, "end_mb": 652.0, "drift_pct": 0.31}  # fmt: skip
    md = markdown({"machine": {"device": "cpu"}, "sections": {"memory": short}})
    assert "650.0 MB after 24 jobs" in md
    md = markdown({"machine": {"device": "cpu"}, "sections": {"memory": memory(None)}})  # runs before the key
    assert "700.0 MB after 200 jobs" in md
