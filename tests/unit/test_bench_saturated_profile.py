"""The saturated profile's buckets: py-spy's raw lines split into the pipeline and between jobs."""

from benchmarks.saturated_profile import buckets, table

RAW = [
    "thread (1): MainThread;main (worker/__main__.py:69);JobRunner.run_token (worker/runner.py:110);"
    "Pipeline.compute (worker/pipeline.py:127);explain (worker/cam.py:126);backward (torch/_tensor.py:600) 30",
    "thread (1): MainThread;main (worker/__main__.py:69);JobRunner.run_token (worker/runner.py:110);"
    "Pipeline.compute (worker/pipeline.py:120);_decode_rgb (shared/imaging.py:113) 10",
    "thread (1): MainThread;main (worker/__main__.py:69);JobRunner._backlog (worker/runner.py:124);"
    "JobStore.take (shared/jobs.py:414);Pipeline.execute (redis/client.py:1600) 8",
    "thread (1): MainThread;main (worker/__main__.py:69);JobRunner.run_token (worker/runner.py:112);"
    "FinishLane.wait (worker/runner.py:396) 2",
    "thread (1): MainThread;Celery.start (celery/app/base.py:623) 1",
    "thread (7): finish_0;Pipeline.finish (worker/pipeline.py:159);encode_png (worker/render.py:55) 40",
    "garbage without a count",
]


def test_main_thread_samples_are_bucketed_by_place_and_deepest_segcam_function():
    total, counts = buckets(RAW)
    assert total == 51  # the lane's thread and the malformed line are not counted
    assert counts == {
        ("pipeline", "explain"): 30,
        ("pipeline", "_decode_rgb"): 10,
        ("between jobs", "JobStore.take"): 8,
        ("between jobs", "FinishLane.wait"): 2,
        ("between jobs", "(Celery, outside segcam)"): 1,
    }
    assert buckets(RAW, thread="finish_0") == (40, {("between jobs", "encode_png"): 40})


def test_the_table_turns_shares_into_milliseconds_per_job():
    total, counts = buckets(RAW)
    text = table(total, counts, ms_per_job=51.0)
    assert "| **pipeline** | (all) | **78.4 %** | **40.00** |" in text
    assert "| **between jobs** | (all) | **21.6 %** | **11.00** |" in text
    assert "| between jobs | `JobStore.take` | 15.7 % | 8.00 |" in text


def test_the_process_tree_lists_each_process_before_its_children():
    import subprocess
    import sys
    import time

    from benchmarks.run import process_tree

    sleep = "import time; time.sleep(30)"
    code = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {sleep!r}]); {sleep}"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while len(tree := process_tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree[0] == parent.pid and len(tree) == 2  # the parent, then its one child
    finally:
        for pid in reversed(process_tree(parent.pid)):
            subprocess.run(["kill", str(pid)], check=False)
        parent.wait()
