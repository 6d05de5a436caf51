"""Fault injection for reliability tests; inert unless ``SEGCAM_FAULT_INJECTION=true``.

A test uploads a PNG carrying a ``segcam-fault`` text chunk, ``ACTION[:ARG]@STAGE``:

- ``kill@inference``: SIGKILL this process (a segfault, the OOM killer) in that stage
- ``crash@cam``: raise an exception
- ``oom@inference``: raise ``torch.cuda.OutOfMemoryError``, as a CUDA allocation would
- ``sleep:S@preprocess``: sleep S seconds (the soft time limit interrupts it)
- ``hang:S@preprocess``: sleep S seconds ignoring the soft time limit (the hard one kills it)

The chunk is read only when injection is on, so production workers ignore it. The
gateway accepts such a PNG like any other: the fault is a property of the job, and the
same job faults again on every delivery, which is what a poison job looks like.
"""

from __future__ import annotations

import io
import os
import signal
import time

import torch
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

CHUNK = "segcam-fault"


def read_fault(data: bytes) -> str | None:
    if not data.startswith(b"\x89PNG"):
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return getattr(im, "text", {}).get(CHUNK)
    except Exception:
        return None


def trigger(fault: str, stage: str) -> None:
    action, _, at = fault.partition("@")
    if at != stage:
        return
    name, _, arg = action.partition(":")
    if name == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif name == "crash":
        raise RuntimeError(f"injected crash in {stage}")
    elif name == "oom":
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected in {stage})")
    elif name == "sleep":
        time.sleep(float(arg or 1))
    elif name == "hang":
        end = time.monotonic() + float(arg or 60)
        while (left := end - time.monotonic()) > 0:
            try:
                time.sleep(left)
            except SoftTimeLimitExceeded:
                continue
