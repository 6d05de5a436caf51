"""Between jobs at low load: the pool child listens for the next submission itself.

Each Celery delivery costs a job about 1 to 1.5 ms on a 2-core VM whose processes wake cold:
the parent wakes on BRPOP, writes kombu's unacked record (a round trip), and hands the job to
the pool child on its event loop's next turn (docs/performance.md, ``make trace``). A task
that has just finished its jobs still holds its message, so the parent fetches nothing
(prefetch 1, late acks); for up to ``linger_ms`` the child listens on its queues' pub/sub
channels, where every submission announces itself (``queued <job id>``, see ``_CREATE`` in
``shared/jobs.py``). When a job is queued on the task's queue, the runner claims it with
the backlog-only take a draining task uses: the job's message comes off the broker list in
that same script, so exactly one worker runs the job, and an idle worker whose parent is
already waiting on the list gets it first. A job queued on another of the worker's queues
ends the wait, so the parent delivers that one without delay.

The runner lingers only within ``drain_s`` of the task's start: a job it claims runs under
the task's time limits, which started with the task, and settings keep ``drain_s`` within a
quarter of the soft limit. A wait never raises: on any Redis error it reports "nothing
heard" and the task ends as it would have without lingering.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

log = logging.getLogger("segcam.worker")


class QueueWatch:
    def __init__(
        self, client: redis.Redis, channels: dict[str, str], follow: Callable[[], dict[str, str]] | None = None
    ) -> None:
        """``channels``: the worker's queues (Celery queue names) -> their pub/sub channels.
        ``follow``: where a worker that serves every model reads them again at each ``start``,
        to gain the queue of a model imported after it started (``worker/model_watch.py``)."""
        self.client = client
        self.follow = follow
        self.ps: redis.client.PubSub | None = None
        self.listening = False
        self._set_channels(channels)

    def _set_channels(self, channels: dict[str, str]) -> None:
        self.queues = tuple(channels)
        self.queue_of = {ch.encode(): q for q, ch in channels.items()}

    def start(self, timeout: float = 1.0) -> bool:
        """Listen from now on. Returns once Redis has confirmed the subscriptions, so a job
        queued from then on is heard; the caller looks at the queue once more after this.
        Called once the queue ran dry, after the last job's result went out: the store read
        of ``follow`` is on no job's path."""
        if self.listening:
            return True
        if self.follow is not None:
            try:
                self._set_channels(self.follow())
            except OSError as e:  # the store is unreadable for a moment: keep what we had
                log.warning("model store unreadable: %s", e)
        try:
            if self.ps is None:
                self.ps = self.client.pubsub()
            self.ps.subscribe(*self.queue_of)
            pending, deadline = len(self.queue_of), time.monotonic() + timeout
            while pending and (left := deadline - time.monotonic()) > 0:
                m = self.ps.get_message(timeout=left)  # earlier replies (unsubscribe, stale messages) skipped
                if m is not None and m["type"] == "subscribe":
                    pending -= 1
            self.listening = pending == 0
        except redis.RedisError as e:
            log.debug("queue watch unavailable: %s", e)
            self._drop()
        return self.listening

    def wait(self, queue: str, until: float) -> str | None:
        """The ID of a job queued on ``queue`` before ``until`` (monotonic), else None: the time
        ran out, or a job was queued on another of the worker's queues first."""
        if not self.listening:
            return None
        try:
            while (left := until - time.monotonic()) > 0:
                m = self.ps.get_message(timeout=left)
                if m is None or m["type"] != "message" or not m["data"].startswith(b"queued "):
                    continue  # a timeout slice, or positions that moved
                if self.queue_of.get(m["channel"]) != queue:
                    return None
                return m["data"][7:].decode()
        except redis.RedisError as e:
            log.debug("queue watch lost: %s", e)
            self._drop()
        return None

    def stop(self) -> None:
        """Stop listening until the next ``start``: nothing piles up while jobs run."""
        if not self.listening:
            return
        self.listening = False
        try:
            self.ps.unsubscribe()
        except redis.RedisError:
            self._drop()

    def _drop(self) -> None:
        self.listening = False
        if self.ps is not None:
            try:
                self.ps.close()
            except redis.RedisError:
                pass
            self.ps = None
