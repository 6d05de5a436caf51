"""The parent's warm shutdown, as the pool child sees it.

Celery tells only the parent process of a SIGTERM. The child's task finishes what it runs,
but with draining and lingering (``worker/runner.py``) it would go on claiming its queue's
next jobs for up to ``drain_s``, so a scale-down or a rolling restart waited for the queue
instead of one batch. A byte of shared memory, made here before the pool forks (the parent
imports this with the signal handlers), carries the news to every child, even one forked
later to replace another.
"""

from __future__ import annotations

import multiprocessing

_flag = multiprocessing.RawValue("b", 0)


def begin() -> None:
    """Called from the parent's signal handler: a plain store, no lock to deadlock on."""
    _flag.value = 1


def under_way() -> bool:
    return bool(_flag.value)
