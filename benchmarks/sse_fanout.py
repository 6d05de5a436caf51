"""What hundreds of open SSE streams cost the gateway while their queue drains.

    python -m benchmarks.sse_fanout [--jobs 300] [--intervals 0.25,1] [--redis redis://127.0.0.1:6379/13]

Every job's client follows it, each on its own connection: first all by ``?wait`` long polls
(they hear only their job's end), then by SSE (they also hear each move of the queue, as
positions and ETAs), once per ``SEGCAM_EVENTS_POSITION_INTERVAL_S`` given. The jobs are queued
before one worker starts; while they drain, a probe times ``GET /healthz`` every 50 ms, which is
what every other request of the gateway waits behind. Reports the gateway's CPU seconds, the
Redis commands of the whole drain, the events each stream got and the probe's p50 and max, and
writes ``benchmarks/results/sse_fanout-<utc-time>.json``.

Until stop 34 each SSE stream read its own record and its ETA's inputs (five blocking round
trips) at every move of its queue; with 400 streams a request waited up to 3.2 s behind them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis

from benchmarks.run import ROOT, Procs, save_result
from stack.local import API_CMD, free_port
from training.shapes import make_scene

FINAL = ("succeeded", "failed", "cancelled")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scene() -> bytes:
    buf = io.BytesIO()
    make_scene(7, size=96).image.resize((64, 64)).save(buf, "PNG")
    return buf.getvalue()


async def follow(ac: httpx.AsyncClient, job_id: str, sse: bool) -> int:
    """Events heard until the job is final."""
    n = 0
    if sse:
        async with ac.stream("GET", f"/v1/jobs/{job_id}/events") as s:
            async for line in s.aiter_lines():
                n += line.startswith("event: ")
        return n
    while (await ac.get(f"/v1/jobs/{job_id}", params={"wait": 30})).json()["status"] not in FINAL:
        n += 1
    return n + 1


PROBE = """
import sys, time, httpx
url, after = sys.argv[1], float(sys.argv[2])
time.sleep(after)
with httpx.Client(base_url=url, timeout=60) as c:
    while not sys.stdin.closed:
        t = time.perf_counter()
        c.get("/healthz").raise_for_status()
        print((time.perf_counter() - t) * 1000, flush=True)
        time.sleep(0.05)
"""


def start_probe(url: str, after_s: float) -> subprocess.Popen:
    """In a process of its own: the followers' event loop (and its GIL) must not delay it."""
    return subprocess.Popen([sys.executable, "-c", PROBE, url, str(after_s)], stdout=subprocess.PIPE, text=True)


def stop_probe(p: subprocess.Popen) -> list[float]:
    p.terminate()
    out, _ = p.communicate(timeout=10)
    return sorted(float(x) for x in out.split())


def one(args, mode: str, interval: float, tmp: Path) -> dict:
    prefix = f"fanout-{uuid.uuid4().hex[:6]}"
    env = {"SEGCAM_REDIS_URL": args.redis, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_DEVICE": "cpu",
           "SEGCAM_MODEL_DIR": str(ROOT / "models" / "store"), "SEGCAM_TORCH_THREADS": "1",
           **({"SEGCAM_EVENTS_POSITION_INTERVAL_S": str(interval)} if interval else {})}  # fmt: skip
    procs, port = Procs(env, tmp), free_port()
    r = redis.Redis.from_url(args.redis)
    try:
        api = procs.spawn("api", API_CMD, SEGCAM_API_PORT=str(port), SEGCAM_API_HOST="127.0.0.1")
        url = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{url}/healthz")
        data = scene()
        with httpx.Client(base_url=url, timeout=30) as c:
            ids = [c.post("/v1/jobs", files={"image": ("a.png", data)}).json()["id"] for _ in range(args.jobs)]

        async def run() -> dict:
            limits = httpx.Limits(max_connections=args.jobs + 10, max_keepalive_connections=args.jobs + 10)
            async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as ac:
                tasks = [asyncio.create_task(follow(ac, j, mode == "sse")) for j in ids]
                await asyncio.sleep(2)  # every stream or poll is open
                cpu0, cmd0, t0 = cpu_s(api.pid), int(r.info("stats")["total_commands_processed"]), time.monotonic()
                procs.spawn("worker", ["python", "-m", "worker", "--name", f"{prefix}@bench"])
                probing = start_probe(url, args.probe_after_s)
                events = await asyncio.gather(*tasks)
                took = time.monotonic() - t0
                lat = stop_probe(probing)
                return {
                    "mode": mode, "interval_s": interval if mode == "sse" else None, "jobs": args.jobs,
                    "api_cpu_s": round(cpu_s(api.pid) - cpu0, 2),
                    "redis_commands": int(r.info("stats")["total_commands_processed"]) - cmd0,
                    "events_per_client": round(sum(events) / len(events), 1), "drain_s": round(took, 1),
                    "healthz_p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
                    "healthz_max_ms": round(lat[-1], 1) if lat else None,
                }  # fmt: skip

        return asyncio.run(run())
    finally:
        procs.close()
        for k in r.scan_iter(f"{prefix}*"):
            r.delete(k)


def markdown(rows: list[dict]) -> str:
    head = ("| clients follow by | position interval | API CPU s | Redis commands | events per client | drain s "
            "| `/healthz` p50 ms | `/healthz` max ms |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [
        f"| {'SSE' if x['mode'] == 'sse' else '`?wait` long poll'} | {x['interval_s'] or '-'} | {x['api_cpu_s']} "
        f"| {x['redis_commands']} | {x['events_per_client']} | {x['drain_s']} | {x['healthz_p50_ms']} "
        f"| {x['healthz_max_ms']} |"
        for x in rows
    ]
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sse_fanout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--jobs", type=int, default=300, help="jobs, each with its own follower")
    ap.add_argument("--intervals", default="0.25,1", help="SSE position intervals to run, comma-separated")
    ap.add_argument("--probe-after-s", type=float, default=8.0, help="when the probe starts (the worker is up)")
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(one(args, "poll", 0, Path(tmp)))
        for interval in (float(x) for x in args.intervals.split(",") if x):
            rows.append(one(args, "sse", interval, Path(tmp)))
    print(markdown(rows))
    if not args.no_save:
        save_result("sse_fanout", args, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
