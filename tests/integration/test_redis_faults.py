"""Redis restarted or gone: a private redis-server (AOF on, as in the compose file) that the
test stops and starts under a real API and a real worker."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import httpx
import pytest
import redis

from stack.local import free_port, redis_answers
from tests.integration.procs import Procs, job, scene_png, submit, wait_final, wait_until

pytestmark = pytest.mark.integration


class RedisServer:
    def __init__(self, port: int, workdir) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: redis_answers(self.url), 10, "redis-server start")

    def crash(self) -> None:
        """SIGKILL: no shutdown save; only what the AOF already holds survives."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


def test_queued_jobs_and_records_survive_a_redis_crash_with_aof(private_redis, tmp_path):
    procs = Procs({"SEGCAM_REDIS_URL": private_redis.url, "SEGCAM_WORKER_HEARTBEAT_S": "1"}, tmp_path)
    try:
        procs.api()
        accepted = [submit(procs.url, scene_png(300 + i)) for i in range(5)]
        before = {a["id"]: job(procs.url, a["id"]) for a in accepted}
        private_redis.crash()
        private_redis.start()  # same port, same directory: the AOF is replayed
        after = {i: job(procs.url, i) for i in before}  # the API reconnects by itself
        assert after == before
        procs.worker("w1@aof")
        finals = [wait_final(procs.url, i, timeout=90) for i in before]
        assert [f["status"] for f in finals] == ["succeeded"] * 5
    finally:
        procs.close()


def test_redis_unreachable_gives_503_at_once_and_the_api_recovers_by_itself(private_redis, tmp_path):
    procs = Procs({"SEGCAM_REDIS_URL": private_redis.url, "SEGCAM_WORKER_HEARTBEAT_S": "1"}, tmp_path)
    try:
        procs.api()
        procs.worker("w1@down")
        procs.wait_workers(["w1@down"])
        done = submit(procs.url, scene_png(400))["id"]
        wait_final(procs.url, done)
        private_redis.stop()

        t0 = time.monotonic()
        r = httpx.post(f"{procs.url}/v1/jobs", files={"image": ("a.png", scene_png(401))}, timeout=30)
        took = time.monotonic() - t0
        assert r.status_code == 503 and r.headers["retry-after"].isdigit()
        assert r.json()["error"]["code"] in ("backend_unavailable", "queue_unavailable")
        assert took < 3.0, f"a refusal took {took:.2f}s"
        assert httpx.get(f"{procs.url}/v1/jobs/{done}").status_code == 503
        ready = httpx.get(f"{procs.url}/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
        assert httpx.get(f"{procs.url}/healthz").status_code == 200  # the process itself is fine

        private_redis.start()
        wait_until(lambda: httpx.get(f"{procs.url}/readyz").status_code == 200, 30, "API ready again")
        again = wait_final(procs.url, submit(procs.url, scene_png(402))["id"], timeout=60)
        assert again["status"] == "succeeded"
        assert job(procs.url, done)["status"] == "succeeded"  # AOF kept the earlier job too
    finally:
        procs.close()


def test_an_open_event_stream_ends_with_an_error_event_when_redis_goes(private_redis, tmp_path):
    """Its headers are sent, so no 503 can come: it used to be cut mid-chunk with a traceback in
    the log ("response already started"); now its last event says why, as a 503 would."""
    procs = Procs({"SEGCAM_REDIS_URL": private_redis.url}, tmp_path)
    try:
        procs.api()  # no worker: the job stays queued and its stream open
        job_id = submit(procs.url, scene_png(403))["id"]
        got: list[str] = []

        def stream():
            with httpx.stream("GET", f"{procs.url}/v1/jobs/{job_id}/events", timeout=30) as r:
                got.extend(line for line in r.iter_lines() if line)

        t = threading.Thread(target=stream)
        t.start()
        wait_until(lambda: got, 10, "the stream's first event")
        private_redis.stop()
        t.join(timeout=20)
        assert not t.is_alive()
        assert got[0] == "event: queued" and got[-2] == "event: error", got
        assert json.loads(got[-1].removeprefix("data: "))["error"]["code"] == "backend_unavailable"
        log = (tmp_path / "api.log").read_text()
        assert "response already started" not in log and "Traceback" not in log, log[-2000:]
    finally:
        procs.close()


def _memory_full(server: RedisServer, full: bool) -> None:
    """maxmemory 1 byte with noeviction: Redis refuses every write that may add memory (SET,
    HSET, scripts, LPUSH) with an OOM error, and still serves reads, deletes and BRPOP."""
    redis.Redis.from_url(server.url).config_set("maxmemory", 1 if full else 0)


def _oom_env(url: str, soft_s: int) -> dict[str, str]:
    return {
        "SEGCAM_REDIS_URL": url, "SEGCAM_FAULT_INJECTION": "true", "SEGCAM_WORKER_HEARTBEAT_S": "1",
        "SEGCAM_DRAIN_S": "0.5", "SEGCAM_TASK_SOFT_TIME_LIMIT_S": str(soft_s),
        "SEGCAM_TASK_TIME_LIMIT_S": str(soft_s + 2), "SEGCAM_VISIBILITY_TIMEOUT_S": str(soft_s + 4),
        "SEGCAM_UNACKED_RESTORE_INTERVAL_S": "1",
    }  # fmt: skip


def test_a_completion_redis_refuses_for_lack_of_memory_leaves_the_claims_for_a_rerun(private_redis):
    """Redis allows SREM when full (it frees memory): outside one MULTI, the claims would end
    while the results were refused, and the token's re-run would find nothing to take back."""
    from shared.artifacts import ArtifactStore
    from shared.jobs import Completed, JobStore
    from shared.keys import Keys
    from tests.unit.test_jobs import RESULT, SPEC

    client = redis.Redis.from_url(private_redis.url)
    keys = Keys("oom")
    store, artifacts = JobStore(client, keys, 60, 60), ArtifactStore(client, keys, 60)
    store.create("a" * 32, SPEC, "q", b"img")
    assert store.claim("q", "tok", "w1") == ["a" * 32]
    done = [Completed("a" * 32, "q", RESULT, {"mask": b"m" * 1000}, 0.1, 0.2)]

    _memory_full(private_redis, True)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        store.complete(done, artifacts, token="tok", claims=["a" * 32])
    _memory_full(private_redis, False)
    assert store.claimed("tok") == ["a" * 32] and store.get("a" * 32).status.value == "running"
    assert artifacts.get("a" * 32, "mask") is None  # nothing of it was stored

    assert store.reclaim("tok", "w1") == ["a" * 32]  # the re-run takes it back
    assert store.complete(done, artifacts, token="tok", claims=["a" * 32]) == [True]
    assert store.claimed("tok") == [] and artifacts.get("a" * 32, "mask") == b"m" * 1000


@pytest.mark.parametrize(
    ("soft_s", "full_s"),
    [
        pytest.param(30, 3.0, id="within-its-retry-time-the-task-runs-its-token-again"),
        # Past half the soft limit (2 s) the task gives its message back; with Redis still
        # full, the worker cannot (kombu's restore is refused) and exits. The message stays
        # unacknowledged, and a worker started as the launcher would restart it takes it back.
        pytest.param(4, 6.0, id="still-full-when-it-gives-up-a-restarted-worker-takes-it-back"),
    ],
)
def test_a_job_whose_result_redis_refused_for_lack_of_memory_completes_once_memory_frees(
    private_redis, tmp_path, soft_s, full_s
):
    procs = Procs(_oom_env(private_redis.url, soft_s), tmp_path)
    try:
        procs.api()
        procs.worker("w1@oom")
        procs.wait_workers(["w1@oom"])
        slow = submit(procs.url, scene_png(500, fault="sleep:1.5@preprocess"))["id"]
        wait_until(lambda: job(procs.url, slow)["status"] == "running", 30, "job running")
        _memory_full(private_redis, True)  # the result is computed now, and its write is refused
        time.sleep(full_s)
        assert job(procs.url, slow)["status"] == "running"
        _memory_full(private_redis, False)
        freed = time.monotonic()
        if soft_s / 2 < full_s:
            procs.worker("w2@oom")

        final = wait_final(procs.url, slow, timeout=60)
        assert final["status"] == "succeeded", final
        print(f"succeeded {time.monotonic() - freed:.1f} s after memory freed")
        assert final["attempts"] == 2  # claimed, then taken back by its token
        assert httpx.get(f"{procs.url}{final['result']['artifacts']['mask']}").status_code == 200
        again = wait_final(procs.url, submit(procs.url, scene_png(501))["id"], timeout=60)
        assert again["status"] == "succeeded"  # the worker serves on
    finally:
        procs.close()


def test_a_hard_time_limit_while_redis_is_full_restarts_the_worker_and_loses_no_job(private_redis, tmp_path):
    """The hard limit's hook cannot fail the claims while Redis refuses writes, and gives up with
    them held; Celery's ack of the timed-out message is refused too, which stops the worker with
    the message unacknowledged: a restarted worker takes the job back after the visibility
    timeout, and its second hard limit, with Redis writable again, fails it as timed out."""
    procs = Procs(_oom_env(private_redis.url, 2), tmp_path)  # hard limit 4 s; the hook retries 1 s
    try:
        procs.api()
        w1 = procs.worker("w1@hard")
        procs.wait_workers(["w1@hard"])
        stuck = submit(procs.url, scene_png(510, fault="hang:30@preprocess"))["id"]
        wait_until(lambda: job(procs.url, stuck)["status"] == "running", 30, "job running")
        _memory_full(private_redis, True)
        wait_until(lambda: w1.poll() is not None, 30, "the worker's shutdown")
        _memory_full(private_redis, False)
        assert job(procs.url, stuck)["status"] == "running"  # claimed still, not lost
        procs.worker("w2@hard")  # as the launcher or compose would restart w1
        final = wait_final(procs.url, stuck, timeout=60)
        assert final["status"] == "failed" and final["error"]["code"] == "timeout", final
        assert "hard time limit" in final["error"]["message"] and final["attempts"] == 2
        again = wait_final(procs.url, submit(procs.url, scene_png(511))["id"], timeout=60)
        assert again["status"] == "succeeded"
    finally:
        procs.close()
