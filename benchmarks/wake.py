"""A loopback round trip to Redis when the ends were idle, beside the same round trip hot.

    python -m benchmarks.wake [--redis redis://127.0.0.1:6379/12] [--rounds 100] [--idle-ms 50]

Why: a job at low load crosses about ten process boundaries (client, API, Redis, worker and
back; ``make trace`` names them), and on a VM each one that starts from idle pays the host's
wake-up (a halted vCPU, a core in a deep sleep state, cold caches). No code here removes that,
and it differs between the hosts this project is lent by more than the code's own changes do,
so ``make bench`` records it with the machine: overhead figures from two hosts can then be read
against it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import redis

from benchmarks.lua_blob import p50_us  # the same timer, idling before each call


def round_trips(
    ping: Callable[[], object],
    rounds: int = 100,
    idle_ms: float = 50.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """p50 of ``ping`` back to back, and of ``ping`` after ``idle_ms`` of sleep (not timed)."""
    hot = p50_us(ping, rounds, clock=clock) / 1000
    idle = p50_us(ping, rounds, before=lambda: sleep(idle_ms / 1000), clock=clock) / 1000
    return {"rounds": rounds, "idle_ms": idle_ms, "hot_p50_ms": round(hot, 3), "idle_p50_ms": round(idle, 3)}


def idle_driver(sys_root: Path = Path("/sys")) -> dict:
    """How an idle vCPU waits, where the kernel says. A KVM guest's ``haltpoll`` driver spins
    ``guest_halt_poll_ns`` before it halts; at 0 every short wait between two hops of a job is a
    halt and a wake-up (on one host, about 0.3 ms of overhead p50 with jobs 50 ms apart and
    nothing with jobs back to back: ``benchmarks.halt_poll_ab``, docs/performance.md)."""
    found = {}
    for key, path in (("cpuidle", "devices/system/cpu/cpuidle/current_driver"),
                      ("guest_halt_poll_ns", "module/haltpoll/parameters/guest_halt_poll_ns")):  # fmt: skip
        try:
            value = (sys_root / path).read_text().strip()
        except OSError:
            continue
        found[key] = int(value) if value.isdigit() else value
    return found


def redis_round_trips(url: str, rounds: int = 100, idle_ms: float = 50.0, sys_root: Path = Path("/sys")) -> dict:
    r = redis.Redis.from_url(url)
    try:
        return {"probe": "Redis PING from redis-py", **round_trips(r.ping, rounds, idle_ms), **idle_driver(sys_root)}
    finally:
        r.close()


def describe(w: dict) -> str:
    idle = [f"cpuidle {w['cpuidle']}"] if "cpuidle" in w else []
    idle += [f"guest_halt_poll_ns {w['guest_halt_poll_ns']}"] if "guest_halt_poll_ns" in w else []
    return (f"loopback round trip ({w['probe']}, p50): {w['hot_p50_ms']:.3f} ms hot, {w['idle_p50_ms']:.3f} ms "
            f"after {w['idle_ms']:.0f} ms idle" + (f"; {', '.join(idle)}" if idle else ""))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.wake", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--idle-ms", type=float, default=50.0)
    args = ap.parse_args(argv)
    print(describe(redis_round_trips(args.redis, args.rounds, args.idle_ms)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
