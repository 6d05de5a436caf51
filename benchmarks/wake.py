"""A loopback round trip to Redis when the ends were idle, beside the same round trip hot.

    python -m benchmarks.wake [--redis redis://127.0.0.1:6379/12] [--rounds 100] [--idle-ms 50]

Prints both figures and writes ``benchmarks/results/wake-<utc-time>.json``.

Why: a job at low load crosses about ten process boundaries (client, API, Redis, worker and
back; ``make trace`` names them), and on a VM each one that starts from idle pays the host's
wake-up (a halted vCPU, a core in a deep sleep state, cold caches). No code here removes that,
and it differs between the hosts this project is lent by more than the code's own changes do,
so ``make bench`` records it with the machine: overhead figures from two hosts can then be read
against it. The command also times a piece of Python with no I/O at all, about what one hop
runs (a 1.6 KB job record parsed and a view of it dumped as JSON), hot, after ``idle-ms`` of
spinning (time passes, the vCPU stays awake) and after ``idle-ms`` of sleep: what idling costs
code that touches no socket.
"""

from __future__ import annotations

import argparse
import json
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


RECORD = {"id": "0" * 32, "status": "succeeded", "queue": "segcam.shapes", "owner": "", "worker": "w1@host",
          "spec": {"model": "shapes", "model_version": "1", "method": "gradcam", "target_class": None},
          "result": {"classes": [{"index": i, "name": f"class{i}", "pixels": 1000 * i, "share": i / 100,
                                  "cam_energy_in_mask": 0.5} for i in range(12)],
                     "timings_ms": {s: 1.5 for s in ("decode", "preprocess", "inference", "cam", "encode", "total")},
                     "reproduce": {"torch": "2.14.1", "torchvision": "0.29.1", "grad-cam": "1.5.7", "seed": 0}},
          "created_at": 1.0e9, "started_at": 1.0e9, "finished_at": 1.0e9}  # fmt: skip


def hop_code(record: str = json.dumps(RECORD)) -> str:
    """The CPU part of a hop: parse a job record, build a view of it, dump that as JSON."""
    rec = json.loads(record)
    view = {k: v for k, v in rec.items() if k not in ("owner", "queue")}
    view["result"] = {
        **rec["result"],
        "artifacts": {n: f"/v1/jobs/{rec['id']}/artifacts/{n}" for n in ("mask", "heatmap")},
    }
    return json.dumps(view, separators=(",", ":"))


def spin(s: float, clock: Callable[[], float] = time.perf_counter) -> None:
    end = clock() + s
    while clock() < end:
        pass


def code_after_idle(
    code: Callable[[], object] = hop_code,
    rounds: int = 100,
    idle_ms: float = 50.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.perf_counter,
    spin: Callable[[float], None] = spin,
) -> dict:
    """p50 microseconds of ``code`` hot, after ``idle_ms`` spinning and after ``idle_ms`` asleep."""
    hot = p50_us(code, rounds, clock=clock)
    spun = p50_us(code, rounds, before=lambda: spin(idle_ms / 1000), clock=clock)
    slept = p50_us(code, rounds, before=lambda: sleep(idle_ms / 1000), clock=clock)
    return {"rounds": rounds, "idle_ms": idle_ms, "hot_us": round(hot, 1), "after_spin_us": round(spun, 1),
            "after_sleep_us": round(slept, 1)}  # fmt: skip


def describe_code(c: dict) -> str:
    return (f"a hop's Python (1.6 KB record parsed, view dumped), p50: {c['hot_us']:.0f} us hot, "
            f"{c['after_spin_us']:.0f} us after {c['idle_ms']:.0f} ms spinning, {c['after_sleep_us']:.0f} us "
            f"after {c['idle_ms']:.0f} ms asleep")  # fmt: skip


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
    ap.add_argument("--no-save", action="store_true", help="print the figures only")
    args = ap.parse_args(argv)
    loopback = redis_round_trips(args.redis, args.rounds, args.idle_ms)
    print(describe(loopback))
    code = code_after_idle(rounds=args.rounds, idle_ms=args.idle_ms)
    print(describe_code(code))
    if not args.no_save:
        from benchmarks import run  # not at the top: run imports this module

        run.save_result("wake", args, {"loopback": loopback, "hop_code": code})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
