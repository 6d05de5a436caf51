"""Live job updates for SSE streams and long polls, from Redis pub/sub.

One pub/sub connection per API process. A follower of a job listens on the job's channel
(status and stage changes) and, while it is queued, on its queue's channel (positions
moved); channels are subscribed while someone follows them and dropped after. A message
says what changed (a stage name, a final status, or just "look again"); the follower
re-reads the job record for everything else, so a missed or repeated message can never
show a wrong state, and fast stages are still reported one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import redis.asyncio as aioredis

from shared.keys import Keys
from shared.settings import Settings

log = logging.getLogger("segcam.api")


class Follower:
    def __init__(self, channels: tuple[str, ...]) -> None:
        self.channels = channels
        self.inbox: asyncio.Queue[str] = asyncio.Queue()

    def put(self, payload: str) -> None:
        self.inbox.put_nowait(payload)

    async def wait(self, timeout: float) -> list[str]:
        """The messages that arrived within ``timeout`` seconds (empty: nothing changed).

        A message is a stage name (``preprocess``, ``inference``, ...), a final status, or
        a bare "look again" (``changed``, ``moved``)."""
        try:
            first = await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return []
        out = [first]
        while not self.inbox.empty():
            out.append(self.inbox.get_nowait())
        return out


class EventHub:
    def __init__(self, settings: Settings) -> None:
        self.keys = Keys(settings.key_prefix)
        self.client = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=settings.redis_connect_timeout_s
        )
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.followers: dict[str, set[Follower]] = defaultdict(set)
        self.task: asyncio.Task | None = None

    async def follow(self, job_id: str, queue: str) -> Follower:
        f = Follower((self.keys.job_events(job_id), self.keys.queue_events(queue)))
        new = [c for c in f.channels if not self.followers[c]]
        for c in f.channels:
            self.followers[c].add(f)
        if new:
            await self.pubsub.subscribe(*new)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._read())
        return f

    async def unfollow(self, f: Follower) -> None:
        gone = []
        for c in f.channels:
            self.followers[c].discard(f)
            if not self.followers[c]:
                del self.followers[c]
                gone.append(c)
        if gone:
            with contextlib.suppress(Exception):
                await self.pubsub.unsubscribe(*gone)

    async def _read(self) -> None:
        while self.followers:
            try:
                msg = await self.pubsub.get_message(timeout=1.0)
            except Exception as e:  # Redis went away: wake everyone (they re-read or report 503)
                log.warning("event stream interrupted: %s", e)
                self._wake_all()
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await self.pubsub.subscribe(*self.followers)
                continue
            if msg and msg.get("type") == "message":
                channel, payload = msg["channel"].decode(), msg["data"].decode()
                for f in list(self.followers.get(channel, ())):
                    f.put(payload)

    def _wake_all(self) -> None:
        for fs in self.followers.values():
            for f in fs:
                f.put("changed")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
            await self.client.aclose()
