"""Helpers to run segcam's real processes in a test and to hurt them."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from PIL import PngImagePlugin

from shared.schemas import FINAL_STATUSES
from stack.local import API_CMD, free_port, python_cmd
from tests.conftest import ROOT
from training.shapes import make_scene


def scene_png(seed: int, size: tuple[int, int] = (96, 96), fault: str | None = None) -> bytes:
    img = make_scene(40_000_000 + seed, size=96).image.resize(size)
    info = PngImagePlugin.PngInfo()
    if fault:
        info.add_text("segcam-fault", fault)
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


class Procs:
    """API and worker processes started with one environment; everything is killed at close."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, "SEGCAM_MODEL_DIR": str(ROOT / "models" / "store"), **env}
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.api_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, cmd: list[str], name: str, extra: dict[str, str]) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            p = subprocess.Popen(
                python_cmd(cmd), cwd=ROOT, env={**self.env, **extra}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(p)
        return p

    def api(self, port: int | None = None) -> subprocess.Popen:
        self.api_port = port or free_port()
        p = self._spawn(API_CMD, "api", {"SEGCAM_API_PORT": str(self.api_port), "SEGCAM_API_HOST": "127.0.0.1"})
        wait_until(lambda: _ok(f"{self.url}/healthz"), 30, "API did not start")
        return p

    def worker(self, name: str, **extra: str) -> subprocess.Popen:
        # As a GPU worker runs: two post-processing threads and the finishing lane, both in the
        # forked pool child, so every integration and chaos test goes through them.
        env = {"SEGCAM_DEVICE": "cpu", "SEGCAM_TORCH_THREADS": "1", "SEGCAM_POSTPROCESS_THREADS": "2",
               "SEGCAM_OVERLAP": "on", **extra}  # fmt: skip
        return self._spawn(["python", "-m", "worker", "--name", name], name.split("@")[0], env)

    def wait_workers(self, names: list[str], timeout: float = 60) -> None:
        def ready() -> bool:
            try:
                return set(names) <= set(httpx.get(f"{self.url}/readyz", timeout=2).json().get("workers") or [])
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(ready, timeout, f"workers {names} not ready")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            p.wait()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(cond, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s: {what}")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def submit(url: str, data: bytes, **form: str) -> dict:
    r = httpx.post(f"{url}/v1/jobs", files={"image": ("a.png", data)}, data=form, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()


def job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()


def wait_final(url: str, job_id: str, timeout: float = 120) -> dict:
    return wait_until(
        lambda: (j := job(url, job_id))["status"] in FINAL_STATUSES and j, timeout,
        f"job {job_id} did not finish", every=0.2,
    )  # fmt: skip
