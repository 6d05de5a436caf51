"""``python -m worker.launch``: one worker process per visible GPU, or N CPU workers.

Each GPU gets its own ``python -m worker`` with ``CUDA_VISIBLE_DEVICES`` set before the
process starts and a distinct name (``gpu0@host``, ``gpu1@host``, ...), so no two workers
contend for a device and a saturated GPU shows up as queue depth. A worker that exits
is restarted with backoff; one that refuses its configuration (exit 2) stops the launcher.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from shared.settings import get_settings
from worker.device import DeviceUnavailable, count_cuda_devices, resolve_device

CONFIG_ERROR = 2


@dataclass
class Slot:
    name: str
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0


def plan(device_setting: str, cpu_workers: int, gpu_count: int, host: str, cpu_cores: int) -> list[Slot]:
    """Decide the worker processes for this machine (pure: tested without GPUs)."""
    setting = device_setting.strip().lower()
    if setting.startswith("cuda") or (setting == "auto" and gpu_count > 0):
        if setting.startswith("cuda:"):
            resolve_device(setting, cuda_count=gpu_count)  # raises when absent
            indices = [int(setting.split(":")[1])]
        else:
            if gpu_count == 0:
                resolve_device("cuda", cuda_count=0)  # raises with the message
            indices = list(range(gpu_count))
        return [Slot(f"gpu{i}@{host}", {"CUDA_VISIBLE_DEVICES": str(i), "SEGCAM_DEVICE": "cuda:0"}) for i in indices]
    n = max(1, cpu_workers)
    threads = str(max(1, cpu_cores // n))
    return [
        Slot(
            f"cpu{i}@{host}",
            {
                "CUDA_VISIBLE_DEVICES": "",
                "SEGCAM_DEVICE": "cpu",
                "SEGCAM_TORCH_THREADS": threads,
                # the workers' share of the cores: each decides its finishing lane from it
                "SEGCAM_CPU_WORKERS": str(n),
            },
        )
        for i in range(n)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.launch", description=__doc__)
    ap.add_argument("--cpu-workers", type=int, help="CPU workers when no GPU is used (default: SEGCAM_CPU_WORKERS)")
    args = ap.parse_args(argv)
    settings = get_settings()
    try:
        slots = plan(
            settings.device,
            args.cpu_workers or settings.cpu_workers,
            count_cuda_devices() if settings.device != "cpu" else 0,
            socket.gethostname(),
            os.cpu_count() or 1,
        )
    except DeviceUnavailable as e:
        print(f"segcam launcher: refusing to start: {e}", file=sys.stderr)
        return CONFIG_ERROR

    stopping = False

    def stop(_sig, _frm) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"segcam launcher: starting {', '.join(s.name for s in slots)}", flush=True)
    status = 0
    while not stopping:
        for s in slots:
            if s.proc is None and time.monotonic() >= s.next_start:
                s.proc = subprocess.Popen(
                    [sys.executable, "-m", "worker", "--name", s.name], env={**os.environ, **s.env}
                )
            elif s.proc is not None and (rc := s.proc.poll()) is not None:
                s.proc = None
                if rc == CONFIG_ERROR:
                    print(f"segcam launcher: {s.name} refused its configuration; stopping", file=sys.stderr)
                    stopping, status = True, CONFIG_ERROR
                    break
                s.restarts += 1
                delay = min(60.0, 2.0 ** min(s.restarts, 6))
                print(f"segcam launcher: {s.name} exited with {rc}; restarting in {delay:.0f}s", file=sys.stderr)
                s.next_start = time.monotonic() + delay
        time.sleep(0.2)
    for s in slots:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown: finish the running job
    for s in slots:
        if s.proc is not None:
            try:
                s.proc.wait(timeout=settings.task_time_limit_s)
            except subprocess.TimeoutExpired:
                s.proc.kill()
    return status


if __name__ == "__main__":
    sys.exit(main())
