"""An SSE stream's queue positions, read for all streams at once by the gateway's event hub."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.integration.procs import Procs, job, scene_png, submit, wait_final, wait_until

pytestmark = pytest.mark.integration


def test_positions_pushed_by_the_hub_count_down_to_running_then_the_result(redis_url, prefix, tmp_path):
    env = {"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_FAULT_INJECTION": "true",
           "SEGCAM_EVENTS_POSITION_INTERVAL_S": "0.1", "SEGCAM_DRAIN_S": "0"}  # fmt: skip
    procs = Procs(env, tmp_path)
    try:
        procs.api()
        procs.worker("pos@local")
        procs.wait_workers(["pos@local"])
        wait_final(procs.url, submit(procs.url, scene_png(59))["id"])  # a service time for the ETAs
        blocker = submit(procs.url, scene_png(60, fault="sleep:1.5@preprocess"))["id"]
        wait_until(lambda: job(procs.url, blocker)["status"] == "running", 20, "blocker running")
        ids = [submit(procs.url, scene_png(61 + i, fault="sleep:0.4@preprocess"))["id"] for i in range(5)]
        streams: dict[str, list[tuple[str, dict]]] = {}

        def follow(job_id: str) -> None:
            got, kind = [], None
            with httpx.stream("GET", f"{procs.url}/v1/jobs/{job_id}/events", timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        got.append((kind, json.loads(line[6:])))
            streams[job_id] = got

        threads = [threading.Thread(target=follow, args=(j,)) for j in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        for i, j in enumerate(ids):
            events = streams[j]
            queued = [d["position"] for k, d in events if k == "queued"]
            assert queued[0] == i and queued == sorted(set(queued), reverse=True) and queued[-1] == 0, (i, events)
            assert all(d["eta_s"] is not None for k, d in events if k == "queued")
            kinds = [k for k, _ in events]
            assert kinds[len(queued)] == "running" and kinds[-1] == "succeeded", kinds
        assert len(streams[ids[-1]]) >= 5 + 2  # five places, then running and the result
    finally:
        procs.close()
