"""The hop tracer (benchmarks/tracing) still finds every function it wraps, and records calls."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

CHECK = """
import asyncio
import api.events, api.routes.jobs, api.validation, kombu.transport.redis, shared.jobs, worker.pipeline
import uvicorn.protocols.http.httptools_impl as h
wrapped = [h.HttpToolsProtocol.data_received, h.RequestResponseCycle.send, api.validation.checked_form,
           api.events.Follower.put, api.routes.jobs.view, shared.jobs.JobStore.create, shared.jobs.JobStore.take,
           shared.jobs.JobStore.load_for_run, shared.jobs.JobStore.complete, kombu.transport.redis.Channel._brpop_read,
           kombu.transport.redis.QoS.append, worker.pipeline.Pipeline.run]
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
