"""Structured logs: with SEGCAM_LOG_JSON=true every line is a JSON object, and every line
about a job carries its ID, in the gateway and in the worker."""

from __future__ import annotations

import json

import pytest
import redis

from tests.conftest import cleanup_prefix
from tests.integration.procs import Procs, scene_png, submit, wait_final

pytestmark = pytest.mark.integration


def test_json_logs_carry_the_job_id_in_api_and_worker(redis_url, run_prefix, tmp_path):
    prefix = f"{run_prefix}-logs"
    procs = Procs({"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_LOG_JSON": "true",
                   "SEGCAM_WORKER_HEARTBEAT_S": "1"}, tmp_path)  # fmt: skip
    try:
        procs.api()
        procs.worker("w1@logs")
        procs.wait_workers(["w1@logs"])
        jid = submit(procs.url, scene_png(1))["id"]
        assert wait_final(procs.url, jid)["status"] == "succeeded"
    finally:
        procs.close()
        cleanup_prefix(redis.Redis.from_url(redis_url), prefix)
    for component, logfile in (("api", "api.log"), ("worker", "w1.log")):
        lines = [ln for ln in (tmp_path / logfile).read_text().splitlines() if ln.strip()]
        entries = [json.loads(ln) for ln in lines]  # every line is JSON
        assert all({"ts", "level", "component", "logger", "msg"} <= e.keys() for e in entries)
        about_job = [e for e in entries if jid in e["msg"] or e.get("job_id", "").find(jid) >= 0]
        assert about_job, f"no {component} line about the job"
        assert all(jid in e.get("job_id", "") for e in about_job), [e for e in about_job if "job_id" not in e]
        assert any(e["component"] == component for e in about_job)
