"""Timestamps at the edges of each hop of a job, in every process of the stack.

Loaded by Python at start-up when this folder is on PYTHONPATH and SEGCAM_TRACE_FILE names
a file (``benchmarks/hop_trace.py`` sets both for the API and the worker it starts). It wraps
a few functions as their modules are imported; each wrapper appends "<time> <pid> <label>>"
on entry and "... <label><" on exit to the file with one unbuffered write (a few
microseconds). Measurement only: never on PYTHONPATH in a deployment.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import sys
import time

_path = os.environ.get("SEGCAM_TRACE_FILE")


def _install(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def mark(label: str) -> None:
        os.write(fd, f"{time.time():.6f} {os.getpid()} {label}\n".encode())

    def wrap(owner, attr: str, label: str) -> None:
        f = getattr(owner, attr)

        @functools.wraps(f)
        def traced(*a, **k):
            mark(label + ">")
            try:
                return f(*a, **k)
            finally:
                mark(label + "<")

        setattr(owner, attr, traced)

    def awrap(owner, attr: str, label: str) -> None:
        f = getattr(owner, attr)

        @functools.wraps(f)
        async def traced(*a, **k):
            mark(label + ">")
            try:
                return await f(*a, **k)
            finally:
                mark(label + "<")

        setattr(owner, attr, traced)

    def wrap_heard(owner, attr: str, label: str) -> None:
        """Marks only the waits that returned something (a job heard of), on their return."""
        f = getattr(owner, attr)

        @functools.wraps(f)
        def traced(*a, **k):
            out = f(*a, **k)
            if out:
                mark(label)
            return out

        setattr(owner, attr, traced)

    patches = {
        "uvicorn.protocols.http.httptools_impl": lambda m: (
            wrap(m.HttpToolsProtocol, "data_received", "recv"),
            awrap(m.RequestResponseCycle, "send", "send"),
        ),
        "api.validation": lambda m: awrap(m, "checked_form", "form"),
        "api.events": lambda m: wrap(m.Follower, "put", "event"),
        "api.routes.jobs": lambda m: wrap(m, "view", "view"),
        "shared.jobs": lambda m: (
            wrap(m.JobStore, "create", "create"),
            wrap(m.JobStore, "take", "take"),
            wrap(m.JobStore, "load_for_run", "load"),
            wrap(m.JobStore, "complete", "complete"),
        ),
        "kombu.transport.redis": lambda m: (wrap(m.Channel, "_brpop_read", "brpop"), wrap(m.QoS, "append", "unacked")),
        "worker.pipeline": lambda m: (wrap(m.Pipeline, "compute", "compute"), wrap(m.Pipeline, "finish", "finish")),
        "worker.linger": lambda m: wrap_heard(m.QueueWatch, "wait", "heard"),
    }

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in patches:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None:
                return None
            exec_module = spec.loader.exec_module

            def patched(module, exec_module=exec_module, name=name):
                exec_module(module)
                patches[name](module)

            spec.loader.exec_module = patched
            return spec

    sys.meta_path.insert(0, Finder())


if _path:
    _install(_path)
