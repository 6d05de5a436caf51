"""Live job updates for SSE streams and long polls, from Redis pub/sub.

One pub/sub connection per API process, while anyone follows a job. A follower hears its
job's channel (status and stage changes) and, for SSE, its place in its queue. A job message
says what changed (a stage name, a final status, or just "look again"); the follower
re-reads the job record for everything else, so a missed or repeated message can never
show a wrong state, and fast stages are still reported one by one. A queue's moves are not
passed on as they are: the hub reads the new places of all the queue's followers at once and
hands each its own (``position N``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque

import redis
import redis.asyncio as aioredis

from shared.keys import Keys
from shared.settings import Settings

log = logging.getLogger("segcam.api")

# Put in every inbox when the gateway starts to shut down: answer now, do not wait for the job.
DRAINING = "draining"
# "position N": the job's new place in its queue, read by the hub for every follower at once.
POSITION = "position "


class Follower:
    """One waiting request's inbox. ``wait`` parks on a bare future that ``put`` resolves:
    ``asyncio.wait_for`` would start a task per wait on Python 3.11, and a loop turn or two
    more between the event and the answer."""

    def __init__(self, channels: tuple[str, ...], job_id: str = "") -> None:
        self.channels = channels
        self.job_id = job_id
        self.position: int | None = None  # the last one put in the inbox
        self.inbox: deque[str] = deque()
        self._waiter: asyncio.Future | None = None

    def put(self, payload: str) -> None:
        self.inbox.append(payload)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float) -> list[str]:
        """The messages that arrived within ``timeout`` seconds (empty: nothing changed).

        A message is a stage name (``preprocess``, ``inference``, ...), a final status,
        ``position N``, ``draining``, or a bare "look again" (``changed``, ``moved``)."""
        if not self.inbox:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(None))
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        out = list(self.inbox)
        self.inbox.clear()
        return out


class EventHub:
    """Fans the deployment's job events out to the followers in this process.

    A single reader task owns the pub/sub connection: it pattern-subscribes to every job and
    queue channel when the first follower arrives, and after ``events_idle_s`` with no
    follower it unsubscribes (an API whose clients do not wait then reads no job's events)
    but keeps the connection, so the next follower waits for one round trip, not for a new
    connection and its handshake. Nothing else touches that connection (redis-py's pub/sub
    is not safe for a second task to subscribe on while the reader waits), so no message is
    lost to a race.
    """

    def __init__(self, settings: Settings) -> None:
        self.keys = Keys(settings.key_prefix)
        self.settings = settings
        self.followers: dict[str, set[Follower]] = defaultdict(set)
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()
        self.wanted = asyncio.Event()  # set by a new follower; wakes a reader parked unsubscribed
        self.closed = False
        self.draining = False
        self.queue_channels: dict[str, str] = {}  # channel -> queue, for the queues followed
        self.moved: set[str] = set()  # queue channels whose followers' positions are to be read
        self.positions: asyncio.Task | None = None
        self._client: aioredis.Redis | None = None  # for those reads; the pub/sub has its own

    async def follow(self, job_id: str, queue: str | None = None) -> Follower:
        """Hear the job's changes and, with ``queue``, its queue's moves (positions for SSE;
        a long poll that only waits for the end leaves the queue out: one wake-up per
        finished job in the queue would otherwise make every waiting poll re-read)."""
        channels = [self.keys.job_events(job_id)] + ([self.keys.queue_events(queue)] if queue else [])
        f = Follower(tuple(channels), job_id)
        for c in f.channels:
            self.followers[c].add(f)
        if queue:
            self.queue_channels[self.keys.queue_events(queue)] = queue
        if self.draining:
            f.put(DRAINING)
            return f
        self.start()
        try:
            if not self.ready.is_set():  # wait_for would cost a task and a loop turn even when set
                await asyncio.wait_for(self.ready.wait(), 10)  # subscribed before the caller reads the record
        except TimeoutError:
            await self.unfollow(f)
            raise redis.ConnectionError("the event stream could not subscribe") from None
        return f

    def start(self) -> None:
        """Connect and subscribe in the background unless already under way, or wake a reader
        parked unsubscribed: the first follower waits for that (a connection and a
        subscription, ~5 ms), so the gateway starts it at start-up (``api/warmup.py``)."""
        self.wanted.set()
        if self.closed:
            return
        if self.task is None or self.task.done():
            self.ready = asyncio.Event()
            self.task = asyncio.create_task(self._read())

    async def unfollow(self, f: Follower) -> None:
        for c in f.channels:
            self.followers[c].discard(f)
            if not self.followers[c]:
                del self.followers[c]
                self.queue_channels.pop(c, None)

    async def _read(self) -> None:
        pattern = self.keys.events_pattern()
        while not self.closed:
            client = aioredis.Redis.from_url(
                self.settings.redis_url,
                socket_connect_timeout=self.settings.redis_connect_timeout_s,
                client_name=f"{self.settings.key_prefix}-events",  # findable in CLIENT LIST
            )
            pubsub = client.pubsub()
            served_since: float | None = None  # when this connection's first subscription was confirmed
            try:
                while not self.closed:  # one subscription per turn; an idle spell ends a turn, not the connection
                    await pubsub.psubscribe(pattern)
                    await self._reply(pubsub, "psubscribe")
                    served_since = served_since or asyncio.get_running_loop().time()
                    self.ready.set()
                    self._wake_all()  # anything may have happened while we were not listening
                    await self._listen(pubsub)
                    if self.closed:
                        return
                    self.ready.clear()  # a follower arriving now waits for the next subscription
                    self.wanted.clear()
                    await pubsub.punsubscribe(pattern)
                    await self._reply(pubsub, "punsubscribe")
                    if not self.followers:
                        await self.wanted.wait()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis went away: followers re-read (and report 503); reconnect
                log.warning("event stream interrupted: %s", e)
                self._wake_all()
                # A connection that served a while (one that died parked, or as a follower came
                # while it unsubscribed) is replaced at once; one that failed young (Redis down
                # or flapping) waits first, so the reader never spins.
                if served_since is None or asyncio.get_running_loop().time() - served_since < 1.0:
                    await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()

    async def _reply(self, pubsub, kind: str) -> None:
        """Reads up to the server's confirmation, so that ``ready`` means subscribed. A
        connection that went quiet while parked (a peer gone without a reset) gets no
        answer: that counts as a lost connection, so it is replaced."""
        deadline = asyncio.get_running_loop().time() + self.settings.redis_socket_timeout_s
        while (msg := await pubsub.get_message(timeout=1.0)) is None or msg["type"] != kind:
            if asyncio.get_running_loop().time() > deadline:
                raise redis.ConnectionError(f"no {kind} confirmation from Redis")

    async def _listen(self, pubsub) -> None:
        """Hands each event to its followers until ``events_idle_s`` has passed without one."""
        loop = asyncio.get_running_loop()
        idle_since: float | None = None
        while not self.closed:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg and msg.get("type") == "pmessage":
                channel, payload = msg["channel"].decode(), msg["data"].decode()
                if channel in self.queue_channels:
                    self._queue_moved(channel)
                else:
                    for f in list(self.followers.get(channel, ())):
                        f.put(payload)
            if self.followers:
                idle_since = None
            elif idle_since is None:
                idle_since = loop.time()
            elif loop.time() - idle_since > self.settings.events_idle_s:
                return

    def _queue_moved(self, channel: str) -> None:
        self.moved.add(channel)
        if self.positions is None or self.positions.done():
            self.positions = asyncio.create_task(self._read_positions())

    async def _read_positions(self) -> None:
        """Every follower of a queue that moved gets its position from one pipelined read.

        Each submission and each claim moves a queue; when each SSE stream read its own record
        for it (and its ETA's inputs), hundreds of open streams made the gateway's event loop
        block for seconds on Redis round trips. Reads come at most once per
        ``events_position_interval_s``; a stream reads its record only for its job's own events."""
        interval = self.settings.events_position_interval_s
        while self.moved and not self.closed:
            moved, self.moved = self.moved, set()
            for channel in moved:
                fs = list(self.followers.get(channel, ()))
                queue = self.queue_channels.get(channel)
                if not fs or queue is None:
                    continue
                try:
                    ranks = await self._ranks(queue, [f.job_id for f in fs])
                except (redis.RedisError, OSError) as e:  # they read for themselves, and report it
                    log.warning("queue positions unavailable: %s", e)
                    for f in fs:
                        f.put("moved")
                    continue
                for f, rank in zip(fs, ranks, strict=True):
                    if rank is not None and rank != f.position:
                        f.position = rank
                        f.put(f"{POSITION}{rank}")
            await asyncio.sleep(interval)

    async def _ranks(self, queue: str, job_ids: list[str]) -> list[int | None]:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.settings.redis_url,
                socket_connect_timeout=self.settings.redis_connect_timeout_s,
                socket_timeout=self.settings.redis_socket_timeout_s,
            )
        pipe = self._client.pipeline(transaction=False)
        key = self.keys.queued(queue)
        for j in job_ids:
            pipe.zrank(key, j)
        return [None if r is None else int(r) for r in await pipe.execute()]

    def _wake_all(self, message: str = "changed") -> None:
        for fs in self.followers.values():
            for f in fs:
                f.put(message)

    def drain(self) -> None:
        """Wake every follower, now and to come, with ``DRAINING``. uvicorn waits for every open
        connection before it shuts the app down, and an SSE stream or a long poll stays open
        until its job ends (a queued job with no worker: for ever), so on SIGTERM the gateway
        first has them answer with the job as it stands; the client follows it on elsewhere."""
        self.draining = True
        self._wake_all(DRAINING)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the reader. redis-py can swallow a cancellation that lands while it connects or
        subscribes (seen on a gateway whose port was taken: it shut down milliseconds after
        start-up, and then never exited), so the reader also stops at ``closed`` and is
        cancelled again until it ends; past ``timeout_s`` it is left behind, not waited for."""
        self.closed = True
        self.wanted.set()  # a reader parked unsubscribed wakes to see it
        task, loop = self.task, asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while task is not None and not task.done() and loop.time() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if task is not None and not task.done():
            log.warning("the event stream's reader did not stop within %.0f s; shutting down without it", timeout_s)
        if self.positions is not None:
            self.positions.cancel()
            await asyncio.wait({self.positions}, timeout=1.0)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
