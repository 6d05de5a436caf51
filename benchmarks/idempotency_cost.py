"""What an ``Idempotency-Key`` costs a submission at the gateway.

    python -m benchmarks.idempotency_cost [--requests 400] [--rounds 5] [--redis redis://127.0.0.1:6379/13]

Since stop 38 ``SegcamClient.submit`` (and so ``segcam submit``) sends a fresh key with every
submission, so that one whose answer a gateway restart lost can be sent again and get back its
job, not a second one. The gateway then fingerprints the upload (sha256) and the Lua call that
queues the job also writes the key. This times ``POST /v1/jobs`` from a raw-socket client (its
own cost is tens of microseconds) with a fresh key and without one, request by request in
alternation, one gateway and no worker (nothing competes for the cores), a 64 KB image as in the
gateway section of ``make bench``; writes ``benchmarks/results/idempotency_cost-<utc-time>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import redis

from benchmarks.loadgen import RawClient, multipart_request
from benchmarks.run import ROOT, Procs, save_result
from stack.local import API_CMD, free_port

KINDS = ("without a key", "with a fresh key")


def image_64kb() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (150, 150, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def keyed(request: bytes) -> bytes:
    head, sep, body = request.partition(b"\r\n\r\n")
    return head + f"\r\nIdempotency-Key: {uuid.uuid4().hex}".encode() + sep + body


def measure(url: str, requests: int, rounds: int) -> dict[str, list[float]]:
    base = multipart_request(f"{url}/v1/jobs", image_64kb())
    out: dict[str, list[float]] = {k: [] for k in KINDS}
    with RawClient(url) as c:
        for r in range(rounds + 1):  # round 0 warms both paths up and is not kept
            for i in range(requests * 2):
                kind = KINDS[(i + r) % 2]
                req = keyed(base) if kind == KINDS[1] else base
                t0 = time.perf_counter()
                status, body = c.send(req)
                ms = (time.perf_counter() - t0) * 1000
                if status != 202:
                    raise RuntimeError(f"{status}: {body[:200]!r}")
                if r:
                    out[kind].append(ms)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.idempotency_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--requests", type=int, default=400, help="submissions of each kind per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    prefix = f"idem-{uuid.uuid4().hex[:6]}"
    env = {"SEGCAM_REDIS_URL": args.redis, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_MAX_QUEUE_DEPTH": "0",
           "SEGCAM_MODEL_DIR": str(ROOT / "models" / "store")}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        procs, port = Procs(env, Path(tmp)), free_port()
        try:
            procs.spawn("api", API_CMD, SEGCAM_API_PORT=str(port), SEGCAM_API_HOST="127.0.0.1")
            url = f"http://127.0.0.1:{port}"
            procs.wait_http(f"{url}/healthz")
            samples = measure(url, args.requests, args.rounds)
        finally:
            procs.close()
            r = redis.Redis.from_url(args.redis)
            for k in r.scan_iter(f"{prefix}*", count=1000):
                r.delete(k)
    summ = {k: {"p50_ms": round(statistics.median(v), 3), "p99_ms": round(sorted(v)[int(0.99 * len(v))], 3),
                "n": len(v)} for k, v in samples.items()}  # fmt: skip
    ratio = summ[KINDS[1]]["p50_ms"] / summ[KINDS[0]]["p50_ms"]
    rows = ["| submission | POST p50 ms | p99 ms | n |", "|---|---|---|---|"]
    rows += [f"| {k} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['n']} |" for k, v in summ.items()]
    print("\n".join(rows) + f"\n\nwith / without: {ratio:.3f}x at p50")
    if not args.no_save:
        save_result("idempotency_cost", args, {"summary": summ, "ratio_p50": round(ratio, 4)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
