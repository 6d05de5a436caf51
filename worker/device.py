"""Which device a worker runs on, decided before the pool forks.

A worker asked for CUDA on a machine without it must refuse to start: if it quietly
served on the CPU, a saturated GPU fleet would turn into a crawling CPU fleet instead of
a queue. The check uses NVML, which does not initialise CUDA, so the parent process
stays safe to fork (CUDA in a forked child is undefined behaviour).
"""

from __future__ import annotations

import os
import re


class DeviceUnavailable(RuntimeError):
    pass


def count_cuda_devices() -> int:
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    if not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


def resolve_device(setting: str, cuda_count: int | None = None) -> str:
    """Map ``auto|cpu|cuda|cuda:N`` to a concrete torch device string or raise DeviceUnavailable."""
    setting = setting.strip().lower()
    if setting == "cpu":
        return "cpu"
    count = count_cuda_devices() if cuda_count is None else cuda_count
    if setting == "auto":
        return "cuda:0" if count > 0 else "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", setting)
    if not m:
        raise DeviceUnavailable(f"SEGCAM_DEVICE={setting!r} is not one of auto, cpu, cuda, cuda:N")
    index = int(m.group(1) or 0)
    if count == 0:
        raise DeviceUnavailable(
            f"SEGCAM_DEVICE={setting} but no CUDA device is visible to this process "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). "
            "Refusing to fall back to the CPU: set SEGCAM_DEVICE=cpu to serve on the CPU on purpose."
        )
    if index >= count:
        raise DeviceUnavailable(f"SEGCAM_DEVICE={setting} but only {count} CUDA device(s) are visible")
    return f"cuda:{index}"
