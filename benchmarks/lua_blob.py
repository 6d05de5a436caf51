"""What a large string costs going through a Redis Lua script, against a plain command.

    python -m benchmarks.lua_blob [--redis redis://127.0.0.1:6379/12] [--kb 64]

Why segcam's create and claim scripts never take or return an upload: prints round-trip
p50s from Python and Redis's own execution times (SLOWLOG) for the same payload.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import redis


def p50_us(fn, n: int = 2000, before=None, clock=time.perf_counter) -> float:
    """Median microseconds of ``fn`` after 100 untimed calls; ``before``, if given, runs untimed
    ahead of each timed call (``benchmarks.wake`` idles there)."""
    for _ in range(100):
        fn()
    out = []
    for _ in range(n):
        if before is not None:
            before()
        t0 = clock()
        fn()
        out.append((clock() - t0) * 1e6)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lua_blob", description=__doc__)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--kb", type=int, default=64)
    args = ap.parse_args(argv)
    r = redis.Redis.from_url(args.redis)
    blob, key = os.urandom(args.kb * 1024), "segcam-lua-blob-bench"
    noop = r.register_script("return 1")
    set_in_lua = r.register_script("redis.call('SET', KEYS[1], ARGV[1]) return 1")
    get_in_lua = r.register_script("return redis.call('GET', KEYS[1])")
    cases = {  # name: (call, the command whose SLOWLOG entries time it; a script's inner calls are logged too)
        "SET (plain command)": (lambda: r.set(key, blob), b"SET"),
        "GET (plain command)": (lambda: r.get(key), b"GET"),
        "script, small argument, does nothing": (lambda: noop(keys=[key], args=["x"]), b"EVALSHA"),
        "script, the blob as argument, does nothing": (lambda: noop(keys=[key], args=[blob]), b"EVALSHA"),
        "script that SETs the blob": (lambda: set_in_lua(keys=[key], args=[blob]), b"EVALSHA"),
        "script that GETs and returns the blob": (lambda: get_in_lua(keys=[key]), b"EVALSHA"),
    }
    slow_before = r.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
    print(f"| {args.kb} KB blob | round trip p50 us | Redis execution p50 us |\n|---|---|---|")
    try:
        for name, (fn, command) in cases.items():
            rt = p50_us(fn)
            r.config_set("slowlog-log-slower-than", 0)
            r.slowlog_reset()
            for _ in range(200):
                fn()
            r.config_set("slowlog-log-slower-than", slow_before)
            top = [e["duration"] for e in r.slowlog_get(1000) if e["command"].split(b" ", 1)[0] == command]
            print(f"| {name} | {rt:.0f} | {statistics.median(top):.0f} |")
    finally:
        r.config_set("slowlog-log-slower-than", slow_before)
        r.delete(key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
