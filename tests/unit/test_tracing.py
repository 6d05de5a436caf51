"""The hop tracer (benchmarks/tracing) still finds every function it wraps, and records calls."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.hop_trace import HOPS, hop_figures, job_marks, worst_table
from tests.conftest import ROOT

CHECK = """
import asyncio
import api.events, api.routes.jobs, api.validation, kombu.transport.redis, shared.jobs, worker.pipeline
import uvicorn.protocols.http.httptools_impl as h
wrapped = [h.HttpToolsProtocol.data_received, h.RequestResponseCycle.send, api.validation.checked_form,
           api.events.Follower.put, api.routes.jobs.view, shared.jobs.JobStore.create, shared.jobs.JobStore.take,
           shared.jobs.JobStore.load_for_run, shared.jobs.JobStore.complete, kombu.transport.redis.Channel._brpop_read,
           kombu.transport.redis.QoS.append, worker.pipeline.Pipeline.compute, worker.pipeline.Pipeline.finish]
assert all(hasattr(f, "__wrapped__") for f in wrapped), [f for f in wrapped if not hasattr(f, "__wrapped__")]
async def main():
    api.events.Follower(("c",)).put("x")
asyncio.run(main())
"""


def test_every_traced_function_is_wrapped_and_a_call_is_recorded(tmp_path):
    log = tmp_path / "trace.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks" / "tracing"), "SEGCAM_TRACE_FILE": str(log)}
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    labels = [line.split()[2] for line in log.read_text().splitlines()]
    assert labels == ["event>", "event<"]


def test_a_call_s_end_counts_only_after_its_start_in_the_same_job():
    """The worker may write the last job's trailing reply after the client sent the next job:
    that end must not pair with this job's start (it gave a hop of -178 ms)."""
    trace = "\n".join([
        "job", "1.000 1 complete>", "1.001 1 complete<",
        "job", "2.000 2 recv>", "2.0005 1 complete<", "2.100 1 complete>", "2.102 1 complete<",
        "2.103 3 event>", "2.104 3 event<", "2.105 3 event<",
    ])  # fmt: skip
    first, second = job_marks(trace)
    assert first == {"complete>": 1.0, "complete<": 1.001}
    assert second["complete>"] == 2.1 and second["complete<"] == 2.102
    assert second["event<"] == 2.105  # the last delivery of the final event


def test_the_worst_jobs_table_names_the_hop_that_paid():
    base = {"sent": 0.0, "recv>": 0.001, "form>": 0.0015, "create>": 0.002, "compute": 0.010}
    rows = [{**base, "answered": 0.0125}, {**base, "answered": 0.013}, {**base, "create>": 0.032, "answered": 0.043}]
    table = worst_table(rows, 1)
    form_row = next(line for line in table.splitlines() if line.startswith(f"| {HOPS[2][2]} |"))
    assert form_row.split("|")[2:4] == [" 0.50 ", " 30.50 "]  # median job, worst job
    assert table.splitlines()[-1] == "| overhead | 3.00 | 33.00 |"


def test_the_hop_figures_skip_hops_a_job_did_not_cross_and_end_with_the_overhead():
    """What the table prints and the JSON keeps: a Celery hop counts only the jobs Celery
    delivered (a lingering task's jobs have no ``take>``), in path order, overhead last."""
    base = {"sent": 0.0, "recv>": 0.001, "compute": 0.010, "answered": 0.014}
    rows = [{**base, "take>": 0.002, "take<": 0.004}, {**base}, {**base, "answered": 0.020}]
    figures = hop_figures(rows)
    took = next(what for a, b, what in HOPS if (a, b) == ("take>", "take<"))
    assert figures[took] == {"p50_ms": 2.0, "p90_ms": 2.0}  # one job crossed it, not three
    assert figures[HOPS[0][2]]["p50_ms"] == 1.0
    assert list(figures)[-1] == "overhead (end to end - compute)"
    assert figures["overhead (end to end - compute)"] == {"p50_ms": 4.0, "p90_ms": 10.0}
    assert not any(what in figures for _, _, what in HOPS[2:8] if what != took)  # no marks: no row
