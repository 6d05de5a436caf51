"""Redis restarted or gone: a private redis-server (AOF on, as in the compose file) that the
test stops and starts under a real API and a real worker."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

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
