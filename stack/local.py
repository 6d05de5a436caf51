"""Run the whole stack on this machine without Docker: Redis (if needed), API, workers, Flower.

The commands are the ones the Dockerfiles and the compose file run (a static test checks
that), so what works here is what runs in containers. Used by ``segcam up``, ``segcam
demo``, the integration tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

API_CMD = ["python", "-m", "api"]
WORKER_CMD = ["python", "-m", "worker.launch"]
WEBHOOK_CMD = ["python", "-m", "worker.webhooks"]
FLOWER_CMD = ["celery", "-A", "shared.celery_app", "flower"]

REDIS_HINT = (
    "no Redis answers at {url} and no redis-server is installed to start one.\n"
    "  Debian/Ubuntu: sudo apt-get install redis-server\n"
    "  macOS:         brew install redis\n"
    "  Docker:        docker run -d -p 6379:6379 redis:7\n"
    "or point SEGCAM_REDIS_URL at a running Redis."
)


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_redis(port: int, workdir: Path, appendonly: bool = False) -> subprocess.Popen:
    exe = shutil.which("redis-server")
    if exe is None:
        raise StackError(REDIS_HINT.format(url=f"127.0.0.1:{port}"))
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir),
         "--appendonly", "yes" if appendonly else "no", "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StackError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return proc


def python_cmd(cmd: list[str]) -> list[str]:
    """Run ``python``/``celery`` from this interpreter's environment."""
    if cmd[0] == "python":
        return [sys.executable, *cmd[1:]]
    exe = Path(sys.executable).parent / cmd[0]
    return [str(exe) if exe.exists() else cmd[0], *cmd[1:]]


class LocalStack:
    def __init__(
        self,
        env: dict[str, str] | None = None,
        api_port: int | None = None,
        workers: int = 1,
        flower_port: int | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.env = {**os.environ, **(env or {})}
        self.api_port = api_port or free_port()
        self.workers = workers
        self.flower_port = flower_port
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="segcam-logs-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def ensure_redis(self) -> str:
        url = self.env.get("SEGCAM_REDIS_URL", "redis://127.0.0.1:6379/0")
        if redis_answers(url):
            return url
        port = free_port()
        self.redis_proc = start_redis(port, self.log_dir / "redis")
        url = f"redis://127.0.0.1:{port}/0"
        print(f"segcam: no Redis at the configured URL; started redis-server on port {port}", flush=True)
        self.env["SEGCAM_REDIS_URL"] = url
        return url

    def spawn(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log:  # the child keeps its own handle
            proc = subprocess.Popen(
                python_cmd(cmd), env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start(self, timeout_s: float = 120) -> LocalStack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ensure_redis()
        self.env.setdefault("SEGCAM_CPU_WORKERS", str(self.workers))
        self.spawn("api", API_CMD, {"SEGCAM_API_PORT": str(self.api_port), "SEGCAM_API_HOST": "127.0.0.1"})
        self.spawn("workers", WORKER_CMD)
        self.spawn("webhooks", WEBHOOK_CMD)
        if self.flower_port and importlib.util.find_spec("flower") is None:
            print("segcam: flower is not installed (pip install -e '.[flower]'); skipping it", flush=True)
        elif self.flower_port:
            self.spawn("flower", [*FLOWER_CMD, f"--port={self.flower_port}", "--address=127.0.0.1"])
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise StackError(f"{name} exited with {p.returncode}; see {self.log_dir / (name + '.log')}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                last = r.text
                if r.status_code == 200 and len(r.json().get("workers") or []) >= self.workers:
                    return
            except httpx.HTTPError as e:
                last = str(e)
            time.sleep(0.25)
        raise StackError(f"stack not ready after {timeout_s:.0f}s (last /readyz: {last}); logs in {self.log_dir}")

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM to each process, not to its group: a worker's Celery pool children die of a
        SIGTERM of their own (Celery resets it in them), so signalling the group cut the
        running jobs short instead of letting the warm shutdown finish them. What is left of a
        group once its leader is gone, or after ``timeout_s``, is killed."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for _name, p in self.procs.items():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self.procs.clear()
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            self.redis_proc.wait()
            self.redis_proc = None

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
