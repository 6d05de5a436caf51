"""What users see while a job waits and runs: positions counting down, ETAs, stages, SSE,
long polls, signed completion webhooks and metrics, on real processes."""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from shared.webhooks import verify
from tests.conftest import cleanup_prefix
from tests.integration.procs import Procs, job, scene_png, submit, wait_final, wait_until

pytestmark = pytest.mark.integration
SECRET = "whsec-test-0123456789"


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on loopback that answers from a script of status codes."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict, bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(h):
                body = h.rfile.read(int(h.headers["Content-Length"]))
                h.server.received.append(({k.lower(): v for k, v in h.headers.items()}, body))
                code = h.server.statuses.pop(0) if h.server.statuses else 200
                h.send_response(code)
                h.end_headers()

            def log_message(h, *a):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture(scope="module")
def live(redis_url, run_prefix, tmp_path_factory):
    prefix = f"{run_prefix}-live"
    env = {"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_FAULT_INJECTION": "true",
           "SEGCAM_WORKER_HEARTBEAT_S": "1", "SEGCAM_WEBHOOK_SECRET": SECRET, "SEGCAM_WEBHOOK_ALLOW_PRIVATE": "true",
           "SEGCAM_WEBHOOK_BACKOFF_S": "0.3"}  # fmt: skip
    procs = Procs(env, tmp_path_factory.mktemp("live-logs"))
    procs.api()
    procs.worker("w1@live")
    procs._spawn(["python", "-m", "worker.webhooks"], "webhooks", {})
    procs.wait_workers(["w1@live"])
    yield procs
    procs.close()
    cleanup_prefix(redis.Redis.from_url(redis_url), prefix)


def test_positions_are_in_submit_order_and_count_down_with_etas(live):
    for i in range(3):  # a service-time history for the ETA
        wait_final(live.url, submit(live.url, scene_png(i, fault="sleep:0.3@preprocess"))["id"])
    blocker = submit(live.url, scene_png(9, fault="sleep:1.5@preprocess"))["id"]
    wait_until(lambda: job(live.url, blocker)["status"] == "running", 10, "blocker running")
    ids = [submit(live.url, scene_png(10 + i, fault="sleep:0.3@preprocess"))["id"] for i in range(10)]
    views = [job(live.url, i) for i in ids]
    assert [v["position"] for v in views] == list(range(10))
    etas = [v["eta_s"] for v in views]
    assert all(e is not None and e > 0 for e in etas) and etas == sorted(etas) and etas[-1] > etas[0]
    seen, last = [], ids[-1]
    while (v := job(live.url, last))["status"] == "queued":
        seen.append(v["position"])
        time.sleep(0.1)
    assert seen[0] == 9 and seen == sorted(seen, reverse=True) and min(seen) == 0  # counted down to the head
    assert wait_final(live.url, last)["status"] == "succeeded"


def test_sse_streams_each_change_and_closes_after_the_final_event(live):
    blocker = submit(live.url, scene_png(30, fault="sleep:1@preprocess"))["id"]
    wait_until(lambda: job(live.url, blocker)["status"] == "running", 10, "blocker running")
    jid = submit(live.url, scene_png(31, fault="sleep:0.3@inference"))["id"]
    events = []
    with httpx.stream("GET", f"{live.url}/v1/jobs/{jid}/events", timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    assert kinds[0] == "queued" and events[0][1]["position"] == 0
    assert kinds[-1] == "succeeded" and events[-1][1]["result"]["artifacts"]["mask"].endswith("/artifacts/mask")
    stages = [d["stage"] for k, d in events if k == "running"]
    assert {"preprocess", "inference", "cam", "encode"} <= set(stages), stages
    assert stages.index("inference") < stages.index("cam") < stages.index("encode")


def test_long_poll_returns_as_soon_as_the_job_is_final(live):
    jid = submit(live.url, scene_png(40, fault="sleep:0.8@preprocess"))["id"]
    t0 = time.monotonic()
    v = httpx.get(f"{live.url}/v1/jobs/{jid}", params={"wait": 20}, timeout=30).json()
    took = time.monotonic() - t0
    assert v["status"] == "succeeded" and 0.5 < took < 10
    t0 = time.monotonic()
    assert httpx.get(f"{live.url}/v1/jobs/{jid}", params={"wait": 20}, timeout=30).json()["status"] == "succeeded"
    assert time.monotonic() - t0 < 1  # already final: no wait


def test_submit_with_wait_answers_with_the_final_job_in_one_request(live):
    r = httpx.post(f"{live.url}/v1/jobs", files={"image": ("a.png", scene_png(41))}, params={"wait": 20}, timeout=30)
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["status"] == "succeeded" and r.headers["location"] == f"/v1/jobs/{v['id']}"
    assert v["result"]["artifacts"]["overlay"].endswith(f"/v1/jobs/{v['id']}/artifacts/overlay")
    assert job(live.url, v["id"])["status"] == "succeeded"
    slow = scene_png(42, fault="sleep:1.5@preprocess")
    r = httpx.post(f"{live.url}/v1/jobs", files={"image": ("a.png", slow)}, params={"wait": 0.3}, timeout=30)
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
    assert wait_final(live.url, r.json()["id"])["status"] == "succeeded"


def test_signed_webhook_is_retried_with_backoff_and_attempts_are_recorded(live):
    receiver = Receiver([500, 503, 200])
    jid = submit(live.url, scene_png(50), callback_url=receiver.url)["id"]
    final = wait_until(
        lambda: (j := job(live.url, jid)).get("webhook") and j["webhook"]["delivered"] and j, 30, "webhook delivered"
    )
    attempts = final["webhook"]["attempts"]
    assert [a["status_code"] for a in attempts] == [500, 503, 200] and len(receiver.received) == 3
    times = [datetime.fromisoformat(a["at"]).timestamp() for a in attempts]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6  # exponential backoff from 0.3 s
    headers, body = receiver.received[-1]
    assert verify(SECRET, headers["x-segcam-timestamp"], body, headers["x-segcam-signature"], now=time.time())
    assert not verify("wrong-secret", headers["x-segcam-timestamp"], body, headers["x-segcam-signature"], time.time())
    assert not verify(SECRET, headers["x-segcam-timestamp"], body + b" ", headers["x-segcam-signature"], time.time())
    payload = json.loads(body)
    assert payload["id"] == jid and payload["status"] == "succeeded" and payload["result"]["classes"]
    receiver.shutdown()


def test_failed_and_cancelled_jobs_post_their_final_status_too(live):
    receiver = Receiver([])
    failed = submit(live.url, scene_png(60, fault="crash@cam"), callback_url=receiver.url)["id"]
    blocker = submit(live.url, scene_png(61, fault="sleep:1@preprocess"))["id"]
    wait_until(lambda: job(live.url, blocker)["status"] == "running", 10, "blocker running")
    queued = submit(live.url, scene_png(62), callback_url=receiver.url)["id"]
    assert httpx.delete(f"{live.url}/v1/jobs/{queued}").status_code == 200
    wait_until(lambda: len(receiver.received) >= 2, 30, "two webhooks")
    statuses = {json.loads(b)["id"]: json.loads(b)["status"] for _, b in receiver.received}
    assert statuses == {failed: "failed", queued: "cancelled"}
    receiver.shutdown()


def test_metrics_count_jobs_queue_and_timings_in_prometheus_format(live):
    text = httpx.get(f"{live.url}/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert value[("segcam_jobs_submitted_total", (("model", "shapes"),))] >= 20
    assert value[("segcam_jobs_succeeded_total", (("model", "shapes"),))] >= 15
    assert value[("segcam_jobs_failed_total", (("model", "shapes"),))] >= 1
    assert value[("segcam_jobs_cancelled_total", (("model", "shapes"),))] >= 1
    assert ("segcam_queue_depth", (("model", "shapes"),)) in value
    assert value[("segcam_queue_wait_seconds_count", (("model", "shapes"),))] >= 15
    assert value[("segcam_service_seconds_count", (("model", "shapes"),))] >= 15
    assert fams["segcam_queue_wait_seconds"].type == "histogram"
