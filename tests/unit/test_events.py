"""The gateway's event hub on a real Redis: what happens to its connection between followers."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import redis

from api.events import DRAINING, POSITION, EventHub


def hub_connection(rclient: redis.Redis, name: str) -> dict | None:
    conns = [c for c in rclient.client_list() if c.get("name") == name]
    assert len(conns) <= 1, conns
    return conns[0] if conns else None


async def hears(rclient: redis.Redis, hub: EventHub, f, job: str, message: str) -> None:
    """A message published on the job's channel reaches its follower."""
    rclient.publish(hub.keys.job_events(job), message)
    got = []
    while message not in got:
        got += await asyncio.wait_for(f.wait(5), 6)


@pytest.fixture
def hub(settings) -> EventHub:
    settings.events_idle_s = 0.2
    return EventHub(settings)


async def until(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return got


def test_an_idle_hub_unsubscribes_but_keeps_its_connection_for_the_next_follower(settings, rclient, hub):
    """The first ``?wait`` after a quiet spell would otherwise pay a new connection (~5 ms)."""
    name = f"{settings.key_prefix}-events"

    async def run():
        hub.start()
        await asyncio.wait_for(hub.ready.wait(), 5)
        first = hub_connection(rclient, name)
        assert first is not None and first["psub"] == "1"
        parked = await until(lambda: (c := hub_connection(rclient, name)) and c["psub"] == "0" and c)
        assert parked["id"] == first["id"] and not hub.ready.is_set() and not hub.task.done()

        f = await hub.follow("job1")  # wakes the parked reader: subscribed again before it returns
        again = hub_connection(rclient, name)
        assert again["id"] == first["id"] and again["psub"] == "1"
        await hears(rclient, hub, f, "job1", "succeeded")
        await hub.unfollow(f)
        await hub.close()

    asyncio.run(run())


def test_a_connection_lost_while_parked_is_replaced_at_once_for_the_next_follower(settings, rclient, hub):
    name = f"{settings.key_prefix}-events"

    async def run():
        hub.start()
        await asyncio.wait_for(hub.ready.wait(), 5)
        parked = await until(lambda: (c := hub_connection(rclient, name)) and c["psub"] == "0" and c)
        rclient.client_kill_filter(_id=parked["id"])
        t0 = time.monotonic()
        f = await hub.follow("job2")
        waited = time.monotonic() - t0
        now = hub_connection(rclient, name)
        assert now is not None and now["id"] != parked["id"] and now["psub"] == "1"
        assert waited < 0.9, f"the reader slept its reconnect back-off ({waited:.2f} s) before a waiting follower"
        await hears(rclient, hub, f, "job2", "failed")
        await hub.close()

    asyncio.run(run())


def test_a_follower_keeps_the_subscription_however_long_it_waits(settings, rclient, hub):
    name = f"{settings.key_prefix}-events"

    async def run():
        f = await hub.follow("job3")
        await asyncio.sleep(1.5)  # past the idle limit, with a follower
        assert hub_connection(rclient, name)["psub"] == "1" and hub.ready.is_set()
        await hears(rclient, hub, f, "job3", "cancelled")
        await hub.close()

    asyncio.run(run())


def test_a_connection_lost_as_a_follower_arrives_mid_unsubscription_is_replaced_at_once(
    settings, rclient, hub, monkeypatch
):
    """The reader had not parked yet (it was reading the unsubscription's reply) when the
    connection died and a follower came: it must not sleep its back-off before that follower."""
    name = f"{settings.key_prefix}-events"
    reply, race = hub._reply, {}

    async def racing_reply(pubsub, kind):
        await reply(pubsub, kind)
        if kind == "punsubscribe" and not race:
            rclient.client_kill_filter(_id=hub_connection(rclient, name)["id"])
            race["t0"] = time.monotonic()
            race["follow"] = asyncio.create_task(hub.follow("job3"))
            await asyncio.sleep(0)  # the follower is registered before the reader goes on

    monkeypatch.setattr(hub, "_reply", racing_reply)

    async def run():
        hub.start()
        await until(lambda: "follow" in race)
        f = await race["follow"]
        waited = time.monotonic() - race["t0"]
        assert hub_connection(rclient, name)["psub"] == "1"
        assert waited < 0.9, f"the reader slept its reconnect back-off ({waited:.2f} s) before a waiting follower"
        await hears(rclient, hub, f, "job3", "succeeded")
        await hub.close()

    asyncio.run(run())


def test_close_ends_a_reader_that_swallows_a_cancellation(hub):
    """redis-py can swallow a cancellation that lands while it connects or subscribes; a
    single ``cancel()`` then left the gateway's shutdown waiting on the reader for ever."""
    swallowed = []

    async def stubborn_read():
        while not hub.closed or not swallowed:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed.append(True)  # as redis-py does mid-connect: carry on

    async def run():
        hub._read = stubborn_read
        hub.start()
        await asyncio.sleep(0.05)
        await asyncio.wait_for(hub.close(timeout_s=3), 5)
        assert hub.task.done() and swallowed
        hub.start()  # a closed hub starts no reader again
        assert hub.task.done()

    asyncio.run(run())


def test_close_gives_up_on_a_reader_that_never_ends_and_says_so(hub, caplog):
    released = asyncio.Event()

    async def deaf_read():
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    async def run():
        hub._read = deaf_read
        hub.start()
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await asyncio.wait_for(hub.close(timeout_s=0.5), 5)
        assert 0.4 < time.monotonic() - t0 < 2 and not hub.task.done()
        released.set()  # so that asyncio.run can finish it
        hub.task.cancel()
        await asyncio.wait({hub.task}, timeout=1)

    with caplog.at_level("WARNING", logger="segcam.api"):
        asyncio.run(run())
    assert "did not stop" in caplog.text


def test_drain_wakes_every_follower_and_answers_new_ones_at_once(hub):
    """On SIGTERM the gateway's long polls and streams answer now instead of holding its exit."""

    async def run():
        f = await hub.follow("job1")
        hub.drain()
        assert DRAINING in await asyncio.wait_for(f.wait(10), 1)  # beside a "changed" from subscribing
        t0 = time.monotonic()
        late = await hub.follow("job2")  # no subscription to wait for
        assert await asyncio.wait_for(late.wait(10), 1) == [DRAINING] and time.monotonic() - t0 < 0.5
        await hub.unfollow(f)
        await hub.unfollow(late)
        await hub.close()

    asyncio.run(run())


def test_a_queue_move_gives_each_follower_its_position_from_one_read_per_interval(settings, rclient, hub):
    """Hundreds of SSE streams on one queue each read their own record at every move of it,
    blocking the gateway for seconds; the hub now reads all their positions in one pipeline,
    at most once per ``events_position_interval_s``, and tells only those whose place changed."""
    settings.events_position_interval_s = 0.3
    queue = "q"
    ids = [f"{i:032x}" for i in range(4)]
    rclient.zadd(hub.keys.queued(queue), {j: i for i, j in enumerate(ids)})
    reads = []
    real_ranks = hub._ranks

    async def counted(q, job_ids):
        reads.append(len(job_ids))
        return await real_ranks(q, job_ids)

    async def positions(f, n: int) -> list[str]:
        got: list[str] = []
        while len([m for m in got if m.startswith(POSITION)]) < n:
            got += await asyncio.wait_for(f.wait(5), 6)
        return [m for m in got if m.startswith(POSITION)]

    async def run():
        hub._ranks = counted
        fs = [await hub.follow(j, queue) for j in ids[1:]]
        for f in fs:
            f.inbox.clear()  # the "changed" that the subscription sent
        rclient.publish(hub.keys.queue_events(queue), "moved")
        assert [await positions(f, 1) for f in fs] == [["position 1"], ["position 2"], ["position 3"]]
        assert reads == [3]

        rclient.zrem(hub.keys.queued(queue), ids[0], ids[1])  # two claimed, in quick succession
        t0 = time.monotonic()
        for _ in range(5):
            rclient.publish(hub.keys.queue_events(queue), "moved")
        assert await positions(fs[1], 1) == ["position 0"] and await positions(fs[2], 1) == ["position 1"]
        assert time.monotonic() - t0 >= 0.2  # not before the interval since the last read had passed
        await asyncio.sleep(0.5)
        assert reads == [3, 3] and not [m for m in fs[0].inbox if m.startswith(POSITION)]  # claimed: no rank
        for f in fs:
            await hub.unfollow(f)
        await hub.close()

    asyncio.run(run())
