"""Faults survived, nothing lost: real API, real Redis, real worker processes, real kills.

Faults are injected with PNG text chunks (worker/faults.py), enabled only for this stack.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from pathlib import Path

import httpx
import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from shared.jobs import JobStore
from shared.keys import Keys
from shared.schemas import FINAL_STATUSES, ImageInfo, JobSpec
from tests.conftest import cleanup_prefix
from tests.integration.procs import Procs, children, job, scene_png, submit, wait_final, wait_until

pytestmark = pytest.mark.integration

LIMITS = {
    "SEGCAM_TASK_SOFT_TIME_LIMIT_S": "4",
    "SEGCAM_DRAIN_S": "0.5",  # a job a continuing task claims shares its time limit (see Settings)
    "SEGCAM_TASK_TIME_LIMIT_S": "6",
    "SEGCAM_VISIBILITY_TIMEOUT_S": "8",
    "SEGCAM_UNACKED_RESTORE_INTERVAL_S": "1",  # also the orphan sweep's interval
    "SEGCAM_ORPHAN_AFTER_S": "12",
}


@pytest.fixture(scope="module")
def chaos(redis_url, run_prefix, tmp_path_factory):
    prefix = f"{run_prefix}-chaos"
    env = {
        "SEGCAM_REDIS_URL": redis_url,
        "SEGCAM_KEY_PREFIX": prefix,
        "SEGCAM_FAULT_INJECTION": "true",
        "SEGCAM_WORKER_HEARTBEAT_S": "1",
        "SEGCAM_MAX_DELIVERIES": "3",
        **LIMITS,
    }
    procs = Procs(env, tmp_path_factory.mktemp("chaos-logs"))
    procs.api()
    procs.workers = {name: procs.worker(name) for name in ("w1@chaos", "w2@chaos")}
    procs.wait_workers(list(procs.workers))
    procs.prefix = prefix
    yield procs
    procs.close()
    cleanup_prefix(redis.Redis.from_url(redis_url), prefix)


def run_ok(url: str, seed: int = 0) -> dict:
    """A healthy job after a fault: the workers are still serving."""
    final = wait_final(url, submit(url, scene_png(seed))["id"], timeout=60)
    assert final["status"] == "succeeded", final
    return final


def _pair_state(url: str, ids: list[str], seconds: float) -> str | None:
    views = [job(url, i) for i in ids]
    if all(v["status"] == "running" for v in views):
        starts = [datetime.fromisoformat(v["started_at"]).timestamp() for v in views]
        # Started far apart, the first may end within moments of this look: not "busy" enough.
        return "both running" if max(starts) - min(starts) < seconds / 2 else "started far apart"
    return "one ended first" if any(v["status"] in FINAL_STATUSES for v in views) else None


def occupy_both_workers(url: str, seed: int, seconds: float, tries: int = 3) -> list[str]:
    """Two sleeping jobs running at once, one per worker, each with most of its sleep ahead:
    what a test needs before it queues a job that no worker may take. A worker whose pool child
    an earlier test's fault is still replacing takes its job late (a child's start took 3-4 s on
    two busy cores): then the other worker can finish its job and take the second one itself,
    or both run only for the moments before the first ends (once in CI: 55 ms, and the test
    behind it read the state of one busy worker). The pair is then tried again."""
    for t in range(tries):
        busy = [submit(url, scene_png(seed + 2 * t + i, fault=f"sleep:{seconds}@preprocess"))["id"] for i in range(2)]
        if wait_until(partial(_pair_state, url, busy, seconds), 20, "both workers busy") == "both running":
            return busy
        for b in busy:
            wait_final(url, b)
    raise AssertionError(f"the two workers never ran two jobs at once in {tries} tries")


def test_a_crashing_job_fails_at_once_and_the_worker_goes_on(chaos):
    final = wait_final(chaos.url, submit(chaos.url, scene_png(1, fault="crash@cam"))["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "internal_error"
    assert "injected crash" in final["error"]["message"] and final["attempts"] == 1
    run_ok(chaos.url)


def test_cuda_out_of_memory_fails_the_job_clearly_and_the_worker_goes_on(chaos):
    final = wait_final(chaos.url, submit(chaos.url, scene_png(2, fault="oom@inference"))["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "out_of_memory"
    run_ok(chaos.url)


def test_soft_time_limit_fails_the_job_with_timeout(chaos):
    t0 = time.monotonic()
    final = wait_final(chaos.url, submit(chaos.url, scene_png(3, fault="sleep:30@preprocess"))["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "timeout"
    assert time.monotonic() - t0 < 15  # the 4 s soft limit, not the 30 s sleep
    run_ok(chaos.url)


def test_hard_time_limit_replaces_the_process_and_fails_the_job_with_timeout(chaos):
    final = wait_final(chaos.url, submit(chaos.url, scene_png(4, fault="hang:30@preprocess"))["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "timeout"
    assert "hard time limit" in final["error"]["message"]
    run_ok(chaos.url)


def test_a_poison_job_stops_after_max_deliveries_and_blocks_nothing(chaos):
    poison = submit(chaos.url, scene_png(5, fault="kill@inference"))["id"]
    healthy = [submit(chaos.url, scene_png(50 + i))["id"] for i in range(3)]
    final = wait_final(chaos.url, poison, timeout=120)
    assert final["status"] == "failed" and final["error"]["code"] == "poison_job", final
    assert "interrupted 3 times" in final["error"]["message"] and final["attempts"] == 4
    assert [wait_final(chaos.url, h)["status"] for h in healthy] == ["succeeded"] * 3


def test_cancel_a_queued_job_and_a_running_one(chaos):
    busy = occupy_both_workers(chaos.url, 60, 2.5)
    queued = submit(chaos.url, scene_png(59))["id"]
    r = httpx.delete(f"{chaos.url}/v1/jobs/{queued}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = httpx.delete(f"{chaos.url}/v1/jobs/{busy[0]}")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True and r.json()["status"] == "running"
    running = wait_final(chaos.url, busy[0])
    assert running["status"] == "cancelled" and running["error"]["code"] == "cancelled"
    assert wait_final(chaos.url, busy[1])["status"] == "succeeded"
    time.sleep(1.0)
    never = job(chaos.url, queued)
    assert never["status"] == "cancelled" and never["started_at"] is None and never["attempts"] == 0
    assert httpx.get(f"{chaos.url}/v1/jobs/{queued}/artifacts/mask").status_code == 409
    assert httpx.delete(f"{chaos.url}/v1/jobs/{busy[1]}").status_code == 409  # already finished


def test_priorities_are_honoured_by_the_workers(chaos):
    occupy_both_workers(chaos.url, 70, 2)
    order = ["low", "low", "normal", "normal", "high", "high"]
    ids = [submit(chaos.url, scene_png(80 + i), priority=p)["id"] for i, p in enumerate(order)]
    positions = [job(chaos.url, i)["position"] for i in ids]
    assert positions == [4, 5, 2, 3, 0, 1]  # highs first, submit order within a priority
    finals = [wait_final(chaos.url, i) for i in ids]
    started = [f["started_at"] for f in finals]
    by_start = [order[i] for i in sorted(range(6), key=lambda i: started[i])]
    assert by_start == ["high", "high", "normal", "normal", "low", "low"]


def test_celery_refuses_a_pickle_message_and_runs_nothing(chaos, redis_url):
    keys = Keys(chaos.prefix)
    store = JobStore(redis.Redis.from_url(redis_url), keys, 60, 60)
    bait = uuid.uuid4().hex  # a queued job with no message: a task that ran would claim it
    spec = JobSpec(model="shapes", model_version="1", image=ImageInfo(format="PNG", width=96, height=96, bytes=1))
    store.create(bait, spec, keys.celery_queue("shapes"), scene_png(90))
    marker = Path(f"/tmp/segcam-pickle-{uuid.uuid4().hex}")
    evil_id = uuid.uuid4().hex

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    queue = Queue(
        keys.celery_queue("shapes"), Exchange(keys.celery_queue("shapes"), "direct"), keys.celery_queue("shapes")
    )
    with Connection(redis_url) as conn:
        Producer(conn).publish(
            ((), {"model": "shapes", "job_id": Evil()}, {}),
            serializer="pickle", exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue],
            headers={"task": "segcam.segment", "id": evil_id, "lang": "py", "argsrepr": "", "kwargsrepr": ""},
        )  # fmt: skip
    time.sleep(3)
    assert not marker.exists()
    # The pickled task never ran: it would have claimed the bait under its own ID. (The workers'
    # sweep gives the bait a message of its own once the pickled one is gone: worker/orphans.py.)
    assert store.get(bait).token != evil_id
    logs = "".join(p.read_text(errors="replace") for p in chaos.log_dir.glob("w*.log"))
    assert "ContentDisallowed" in logs or "disallowed" in logs.lower()
    store.cancel(bait, keys.celery_queue("shapes"))
    run_ok(chaos.url)


def test_pool_children_killed_repeatedly_with_fifty_jobs_in_flight_lose_nothing(chaos):
    ids: list[str] = []
    submitted: list[str] = []
    stop = threading.Event()
    kills: list[int] = []
    store = JobStore(redis.Redis.from_url(chaos.env["SEGCAM_REDIS_URL"]), Keys(chaos.prefix), 60, 60)

    def on_last_delivery() -> bool:
        """A job running its last allowed delivery would fail as poison if killed now: correct,
        but not what this test is about (test_a_poison_job_stops_after_max_deliveries...)."""
        last = int(chaos.env["SEGCAM_MAX_DELIVERIES"])
        recs = (store.get(j) for j in list(submitted))
        return any(r is not None and r.status.value == "running" and r.deliveries >= last for r in recs)

    def killer() -> None:
        seen: dict[int, float] = {}
        rng = random.Random(0)
        while not stop.is_set():
            time.sleep(rng.uniform(0.4, 0.8))
            if on_last_delivery():
                continue
            for main in chaos.workers.values():
                for pid in children(main.pid):
                    first = seen.setdefault(pid, time.monotonic())
                    # a new child loads its model first (slower on a busy machine), then must get to finish its rerun
                    if time.monotonic() - first > 1.5 and rng.random() < 0.7:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            kills.append(pid)
                        except ProcessLookupError:
                            pass

    def track(job_id: str) -> str:
        submitted.append(job_id)
        return job_id

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        with ThreadPoolExecutor(10) as pool:
            ids = list(
                pool.map(
                    lambda i: track(submit(chaos.url, scene_png(100 + i, fault="sleep:0.25@inference"))["id"]),
                    range(50),
                )
            )
        finals = [wait_final(chaos.url, i, timeout=240) for i in ids]
    finally:
        stop.set()
        t.join()
    attempts = sum(f["attempts"] for f in finals)
    print(f"\n50 jobs, {len(kills)} pool children killed, {attempts} executions, all succeeded once")
    assert len(kills) >= 3
    assert [f["status"] for f in finals] == ["succeeded"] * 50, [
        f.get("error") for f in finals if f["status"] != "succeeded"
    ]
    assert sum(f["attempts"] for f in finals) > 50  # some jobs were running when their process died
    assert len({f["id"] for f in finals}) == 50


def test_a_queued_job_whose_message_was_lost_gets_a_new_one_and_completes(chaos):
    """A worker killed between kombu's BRPOP and its unacknowledged record loses a message; the
    job it was for would wait for a later submission's. The workers' sweep gives it a new one
    once the messages the workers hold no longer cover the queue (worker/orphans.py)."""
    r = redis.Redis.from_url(chaos.env["SEGCAM_REDIS_URL"])
    keys = Keys(chaos.prefix)
    store = JobStore(r, keys, 60, 60)
    queue = keys.celery_queue("shapes")
    busy = occupy_both_workers(chaos.url, 220, 3)
    # The state such a loss leaves, made at once (a message taken off the list after a submission
    # could already be a worker's): no job queued but this one, and no message in the list for it.
    assert r.zcard(keys.queued(queue)) == 0
    r.delete(queue)  # a spare message an earlier test left would cover it (messages are interchangeable)
    jid = uuid.uuid4().hex
    spec = JobSpec(model="shapes", model_version="1", image=ImageInfo(format="PNG", width=96, height=96, bytes=1))
    store.create(jid, spec, queue, scene_png(224))
    # What the sweep's count rests on: kombu records each message a worker holds under its queue.
    held = [json.loads(v)[2] for v in r.hvals("unacked")]
    assert held.count(queue) == 2 and all(job(chaos.url, b)["status"] == "running" for b in busy)
    final = wait_final(chaos.url, jid, timeout=60)
    assert final["status"] == "succeeded" and final["attempts"] == 1, final
    assert all(wait_final(chaos.url, b)["status"] == "succeeded" for b in busy)


def test_whole_worker_killed_its_job_comes_back_and_completes_on_another_worker(chaos):
    jid = submit(chaos.url, scene_png(200, fault="sleep:3@preprocess"))["id"]
    wait_until(lambda: job(chaos.url, jid)["status"] == "running", 20, "job running")
    store = JobStore(redis.Redis.from_url(chaos.env["SEGCAM_REDIS_URL"]), Keys(chaos.prefix), 60, 60)
    victim_name = store.get(jid).worker
    victim = chaos.workers[victim_name]
    killed_at = time.monotonic()
    os.killpg(victim.pid, signal.SIGKILL)  # the main process and its pool child at once
    final = wait_final(chaos.url, jid, timeout=60)
    took = time.monotonic() - killed_at
    print(f"\nworker {victim_name} killed; job completed on another worker {took:.1f}s later (visibility 8 s)")
    assert final["status"] == "succeeded" and final["attempts"] == 2
    assert store.get(jid).worker != victim_name
    assert took < 8 + 1 + 10, f"came back after {took:.1f}s (visibility timeout 8 s)"


def _acknowledge_behind_celerys_back(r: redis.Redis, token: str) -> int:
    """Take the token's message out of kombu's unacknowledged record (as Celery's ack after a
    hard limit in a Redis outage, or a failover, would): no redelivery will come."""
    gone = 0
    for tag, raw in r.hgetall("unacked").items():
        if json.loads(raw)[0]["headers"]["id"] == token:
            gone += r.hdel("unacked", tag)
            r.zrem("unacked_index", tag)
    return gone


def _requeued(r: redis.Redis, prefix: str) -> int:
    return sum(int(v) for f, v in r.hgetall(Keys(prefix).metrics()).items() if f.startswith(b"jobs|requeued|"))


def test_a_job_whose_message_was_lost_is_queued_again_and_completes(chaos):
    """The whole worker dies mid-job and its message is gone as well: only the orphan sweep
    (worker/orphans.py) can bring the job back, once its claim is SEGCAM_ORPHAN_AFTER_S old."""
    r = redis.Redis.from_url(chaos.env["SEGCAM_REDIS_URL"])
    store = JobStore(r, Keys(chaos.prefix), 60, 60)
    before = _requeued(r, chaos.prefix)
    jid = submit(chaos.url, scene_png(210, fault="sleep:3@preprocess"))["id"]
    wait_until(lambda: job(chaos.url, jid)["status"] == "running", 20, "job running")
    rec = store.get(jid)
    killed_at = time.monotonic()
    os.killpg(chaos.workers.pop(rec.worker).pid, signal.SIGKILL)
    assert _acknowledge_behind_celerys_back(r, rec.token) == 1
    chaos.workers["w3@chaos"] = chaos.worker("w3@chaos")  # whatever else the earlier tests left
    final = wait_final(chaos.url, jid, timeout=60)
    took = time.monotonic() - killed_at
    print(f"\nworker {rec.worker} killed and its message dropped; the job completed {took:.1f}s later (orphans 12 s)")
    assert final["status"] == "succeeded" and final["attempts"] == 2, final
    assert _requeued(r, chaos.prefix) - before == 1  # the sweep brought it back, nothing else
