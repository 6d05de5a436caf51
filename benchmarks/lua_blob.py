"""What a large string costs going through a Redis Lua script, against a plain command.

    python -m benchmarks.lua_blob [--redis redis://127.0.0.1:6379/12] [--kb 64]

Prints two tables and writes ``benchmarks/results/lua_blob-<utc-time>.json``.

Why segcam's create and claim scripts never take or return an upload: prints round-trip
p50s from Python and Redis's own execution times (SLOWLOG) for the same payload. Then why no
upload travels on pub/sub either: the time from PUBLISH to the subscriber holding the message,
through redis-py's PubSub (its default push handler formats every message into a debug-log
string first), with an identity push handler, and on a raw socket.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable

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


def delivery_us(r: redis.Redis, blob: bytes, receive: Callable[[], bytes], channel: str, n: int = 200) -> float:
    """Median microseconds from PUBLISH to ``receive()`` returning the message's payload, 1 ms
    apart (a subscriber that has just idled, as a lingering worker has)."""
    out = []
    for _ in range(n):
        time.sleep(0.001)
        t0 = time.perf_counter()
        r.publish(channel, blob)
        got = receive()
        out.append((time.perf_counter() - t0) * 1e6)
        if got != blob:
            raise AssertionError(f"the subscriber received {len(got)} bytes, not the {len(blob)} published")
    return statistics.median(out)


def redis_py_receiver(r: redis.Redis, channel: str, **pubsub_kwargs) -> tuple[Callable[[], bytes], Callable]:
    ps = r.pubsub(**pubsub_kwargs)
    ps.subscribe(channel)
    while (m := ps.get_message(timeout=1.0)) is None or m["type"] != "subscribe":
        pass

    def receive() -> bytes:
        while (m := ps.get_message(timeout=1.0)) is None or m["type"] != "message":
            pass
        return m["data"]

    return receive, ps.close


def raw_receiver(host: str, port: int, db: int, channel: str) -> tuple[Callable[[], bytes], Callable]:
    """A RESP2 subscriber on a plain socket: what reading the message costs without a client library."""
    sock = socket.create_connection((host, port))
    sock.sendall(f"SELECT {db}\r\nSUBSCRIBE {channel}\r\n".encode())
    buf = b""
    while buf.count(b"\r\n") < 7:  # +OK, then the subscribe confirmation's six lines
        buf += sock.recv(65536)

    head = b"*3\r\n$7\r\nmessage\r\n" + f"${len(channel)}\r\n{channel}\r\n".encode()

    def receive() -> bytes:
        data = b""
        while True:
            data += sock.recv(1 << 20)
            if data.startswith(head) and b"\r\n" in data[len(head) :]:
                size, _, rest = data[len(head) + 1 :].partition(b"\r\n")
                if len(rest) >= int(size) + 2:
                    return rest[: int(size)]

    return receive, sock.close


def pubsub_table(r: redis.Redis, blob: bytes, kb: int) -> dict[str, dict[str, float]]:
    """Prints the table; returns its figures (receiver -> p50 microseconds, the blob and 10 bytes)."""
    kw = r.connection_pool.connection_kwargs
    channel = "segcam-lua-blob-bench"
    receivers = {
        "redis-py PubSub, default push handler": lambda: redis_py_receiver(r, channel),
        "redis-py PubSub, identity push handler": lambda: redis_py_receiver(r, channel, push_handler_func=lambda m: m),
        "raw socket": lambda: raw_receiver(kw.get("host", "127.0.0.1"), kw.get("port", 6379), kw.get("db", 0), channel),
    }
    print(f"\n| PUBLISH -> subscriber holds it, 1 ms apart | {kb} KB p50 us | 10 B p50 us |\n|---|---|---|")
    figures = {}
    for name, make in receivers.items():
        receive, close = make()
        try:
            big, small = delivery_us(r, blob, receive, channel), delivery_us(r, b"x" * 10, receive, channel)
        finally:
            close()
        print(f"| {name} | {big:.0f} | {small:.0f} |")
        figures[name] = {"blob_p50_us": round(big, 1), "small_p50_us": round(small, 1)}
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lua_blob", description=__doc__)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--kb", type=int, default=64)
    ap.add_argument("--no-save", action="store_true", help="print the tables only")
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
    scripts = {}
    try:
        for name, (fn, command) in cases.items():
            rt = p50_us(fn)
            r.config_set("slowlog-log-slower-than", 0)
            r.slowlog_reset()
            for _ in range(200):
                fn()
            r.config_set("slowlog-log-slower-than", slow_before)
            top = [e["duration"] for e in r.slowlog_get(1000) if e["command"].split(b" ", 1)[0] == command]
            scripts[name] = {"round_trip_p50_us": round(rt, 1), "redis_p50_us": round(statistics.median(top), 1)}
            print(f"| {name} | {rt:.0f} | {scripts[name]['redis_p50_us']:.0f} |")
    finally:
        r.config_set("slowlog-log-slower-than", slow_before)
        r.delete(key)
    pubsub = pubsub_table(r, blob, args.kb)
    if not args.no_save:
        from benchmarks import run

        run.save_result("lua_blob", args, {"scripts": scripts, "pubsub": pubsub})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
