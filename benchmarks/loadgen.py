"""A small, fast HTTP/1.1 load generator: prebuilt requests over keep-alive connections.

Python HTTP clients cost more CPU per request than the gateway itself, which would make
the client the bottleneck of a gateway benchmark on a 2-core machine. This one sends
pre-encoded bytes and reads only the status line and the body length.

    python -m benchmarks.loadgen URL --seconds 10 --connections 16 --file image.png
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


@contextmanager
def steady_heap() -> Iterator[dict]:
    """A timed window free of full collections over the heap that came before it.

    The benchmark's own process holds torch, the models and every section's results; one full
    collection over that heap paused it for 242 ms in the middle of a 20 s overload run (a
    reproduction at 474 arrivals/s, 3 runs: 1 pause, 109 requests over 30 ms), and its
    clients charged the pause to the server: the demo model's refusal p99 of 165.7 and
    175.4 ms in runs 20261129T142738Z and 20261129T160333Z. So, as the API and the worker do
    after start-up (api/main.py, worker/runtime.py): collect once, freeze what exists, and
    collect only what the window makes. Yields the window's collections (count, longest
    pause in ms), which the results keep so that a client-side stall shows in the JSON."""
    stats = {"collections": 0, "max_pause_ms": 0.0}
    started: list[float] = []

    def timer(phase: str, _info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            stats["collections"] += 1
            stats["max_pause_ms"] = max(stats["max_pause_ms"], (time.perf_counter() - started.pop()) * 1000)

    gc.collect()
    gc.freeze()
    gc.callbacks.append(timer)
    try:
        yield stats
    finally:
        gc.callbacks.remove(timer)
        gc.unfreeze()
        stats["max_pause_ms"] = round(stats["max_pause_ms"], 2)


class Window:
    """A timed window for closed-loop users that opens once all ``users`` have arrived (each
    after its untimed warm-up) and closes ``seconds`` later, so that no user's first, cold
    request falls inside it and every user starts with a connection already made."""

    def __init__(self, users: int, seconds: float, timeout: float = 300.0) -> None:
        self.seconds = seconds
        self.timeout = timeout
        self.start = self.stop = float("nan")
        self._all_in = threading.Barrier(users, action=self._open)

    def _open(self) -> None:
        self.start = time.perf_counter()
        self.stop = self.start + self.seconds

    def arrive(self) -> None:
        """Wait for the other users; a user that never comes breaks the wait for all (after
        ``timeout``) instead of hanging the run."""
        self._all_in.wait(self.timeout)


def multipart_request(url: str, image: bytes, fields: dict[str, str] | None = None) -> bytes:
    """The whole HTTP/1.1 request, bytes ready to send (the URL's query string kept)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    boundary = uuid.uuid4().hex
    body = b""
    for k, v in (fields or {}).items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    body += (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="img.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


class RawClient:
    """One blocking keep-alive connection that sends prebuilt requests: a client whose own cost
    (tens of microseconds) does not hide the service's. httpx spends about a millisecond per
    request here (encoding, then parsing the answer), which a latency benchmark would
    otherwise count as the service's overhead."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self.buf = self.buf[:end], self.buf[end + 4 :]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:].strip())
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(head.split(b" ", 2)[1]), body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def _read_response(reader: asyncio.StreamReader, with_body: bool = False):
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    body = await reader.readexactly(length) if length else b""
    return (status, body) if with_body else status


async def _connection(host: str, port: int, request: bytes, deadline: float, out: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status = await _read_response(reader)
            out.append((status, time.perf_counter() - t0))
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        out.append((0, 0.0, str(e)))
    finally:
        writer.close()


async def run(url: str, request: bytes, seconds: float, connections: int) -> dict:
    parts = urlsplit(url)
    out: list = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(
        *(_connection(parts.hostname, parts.port or 80, request, deadline, out) for _ in range(connections))
    )
    wall = time.perf_counter() - started
    codes: dict[int, int] = {}
    lat = sorted(x[1] for x in out if x[0])
    for x in out:
        codes[x[0]] = codes.get(x[0], 0) + 1

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

    return {
        "seconds": wall,
        "requests": len(lat),
        "status_codes": codes,
        "rps": len(lat) / wall,
        "accepted_per_s": codes.get(202, 0) / wall,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


async def at_rate(url: str, requests: list[bytes], rate: float, seconds: float) -> list[tuple[int, int, float, bytes]]:
    """Open-loop arrivals: send ``rate`` requests per second whatever the answers, each on an idle
    keep-alive connection (a new one when all are busy). Returns (request number, status, seconds,
    body) per request, in completion order; request n sent ``requests[n % len(requests)]``."""
    parts = urlsplit(url)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    out: list[tuple[int, int, float, bytes]] = []

    async def one(number: int, request: bytes) -> None:
        t0 = time.perf_counter()
        reused = bool(idle)
        conn = idle.pop() if reused else await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            conn[1].write(request)
            await conn[1].drain()
            status, body = await _read_response(conn[0], with_body=True)
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
            conn[1].close()
            if reused:  # the server closed an idle keep-alive connection: what any client does, try a new one
                conn = await asyncio.open_connection(parts.hostname, parts.port or 80)
                try:
                    conn[1].write(request)
                    await conn[1].drain()
                    status, body = await _read_response(conn[0], with_body=True)
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as e2:
                    conn[1].close()
                    out.append((number, 0, time.perf_counter() - t0, f"{type(e2).__name__}: {e2}".encode()))
                    return
            else:
                out.append((number, 0, time.perf_counter() - t0, f"{type(e).__name__}: {e}".encode()))
                return
        out.append((number, status, time.perf_counter() - t0, body))
        idle.append(conn)

    tasks = []
    start = time.perf_counter()
    n = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        due = n / rate
        if elapsed < due:
            await asyncio.sleep(due - elapsed)
        tasks.append(asyncio.create_task(one(n, requests[n % len(requests)])))
        n += 1
    await asyncio.gather(*tasks)
    for _, w in idle:
        w.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--file", required=True)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    with open(args.file, "rb") as f:
        request = multipart_request(args.url, f.read())
    print(json.dumps(asyncio.run(run(args.url, request, args.seconds, args.connections))))


if __name__ == "__main__":
    main()
