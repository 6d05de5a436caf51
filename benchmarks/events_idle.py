"""What the first ``?wait`` or SSE request after a quiet spell waits for before it can read its job.

    python -m benchmarks.events_idle [--redis redis://127.0.0.1:6379/12] [--rounds 30]

The gateway's event hub (``api/events.py``) must be subscribed before a follower reads the
job record, or an event could slip between the read and the subscription. After
``SEGCAM_EVENTS_IDLE_S`` with no follower it unsubscribes. Until stop 24 it also closed its
connection, so the next follower waited for a new connection, its handshake and the
subscription; now it waits for the subscription on the kept connection. This times
``EventHub.follow`` in each state, rounds interleaved, and writes
``benchmarks/results/events_idle-<utc-time>.json``:

- ``subscribed``: a follower while the hub is subscribed (the usual case under traffic);
- ``parked``: the first follower after the hub unsubscribed (this code after a quiet spell);
- ``new connection``: the first follower of a hub with no connection, as every hub's first
  and, before stop 24, the first after each quiet spell.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from api.events import EventHub
from shared.settings import Settings

STATES = ("subscribed", "parked", "new connection")


async def follow_ms(hub: EventHub, job: str) -> float:
    t0 = time.perf_counter()
    f = await hub.follow(job)
    ms = (time.perf_counter() - t0) * 1000
    await hub.unfollow(f)
    return ms


async def until_parked(hub: EventHub, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while hub.ready.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("the hub did not unsubscribe")
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # parked on its event, the unsubscribe confirmed


async def measure(settings: Settings, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {s: [] for s in STATES}
    hub = EventHub(settings)
    await follow_ms(hub, "start")
    for i in range(rounds + 1):  # round 0 warms each path up and is not kept
        fresh = EventHub(settings)
        new_ms = await follow_ms(fresh, f"n{i}")
        await fresh.close()
        hot_ms = await follow_ms(hub, f"s{i}")
        await until_parked(hub)
        parked_ms = await follow_ms(hub, f"p{i}")
        if i:
            for state, ms in zip(STATES, (hot_ms, parked_ms, new_ms), strict=True):
                out[state].append(ms)
    await hub.close()
    return out


def summary(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {s: {"p50_ms": round(statistics.median(v), 3), "max_ms": round(max(v), 3), "n": len(v)}
            for s, v in samples.items()}  # fmt: skip


def markdown(summ: dict[str, dict[str, float]]) -> str:
    rows = ["| state of the hub when a follower arrives | follow() p50 ms | max ms |", "|---|---|---|"]
    rows += [f"| {s} | {v['p50_ms']:.2f} | {v['max_ms']:.2f} |" for s, v in summ.items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.events_idle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--prefix", default="eventsidle")
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    settings = Settings(redis_url=args.redis, key_prefix=args.prefix, events_idle_s=0.1)
    summ = summary(asyncio.run(measure(settings, args.rounds)))
    print(markdown(summ))
    if not args.no_save:
        from benchmarks import run

        run.save_result("events_idle", args, {"follow_ms": summ})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
