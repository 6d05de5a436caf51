"""Overload with the worker at normal CPU priority and with ``SEGCAM_WORKER_NICE``, side by side.

    python -m benchmarks.nice_ab               # nice 0 vs 10, 2 alternating rounds, ~6 minutes
    python -m benchmarks.nice_ab --nice 5 --rounds 3

On a host where the worker shares its cores with the API, Redis and the clients, a saturated
worker (its forward pass on one core, its finishing lane on the other) competes with the
gateway for every millisecond a refusal takes. Each round offers the same open-loop rate
(``--factor`` x the in-process limit, measured once at the start) to one worker per setting and
reports the refusals' latency, the accepted jobs' answer latency, the jobs the worker got
through (its throughput under overload) and any accepted job lost. Written to decide
the setting's default (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import httpx

from benchmarks import loadgen, run


def overload(url: str, imgs: list[bytes], model: str, rate: float, seconds: float) -> dict:
    requests = [loadgen.multipart_request(f"{url}/v1/jobs", im, {"model": model}) for im in imgs]
    results = asyncio.run(loadgen.at_rate(f"{url}/v1/jobs", requests, rate, seconds))
    accepted = [json.loads(body)["id"] for _, code, _, body in results if code == 202]
    refused = [dt * 1000 for _, code, dt, _ in results if code == 429]
    accept_ms = [dt * 1000 for _, code, dt, _ in results if code == 202]
    lost = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for jid in accepted:
            while (job := client.get(f"/v1/jobs/{jid}", params={"wait": 30}).json())["status"] in ("queued", "running"):
                pass
            lost += job["status"] != "succeeded"
    return {
        "offered": len(results),
        "accepted": len(accepted),
        "refused": len(refused),
        "other": len(results) - len(accepted) - len(refused),
        "refusal_p50_ms": run.pct(refused, 0.5),
        "refusal_p99_ms": run.pct(refused, 0.99),
        "accept_p99_ms": run.pct(accept_ms, 0.99),
        "accepted_per_s": len(accepted) / seconds,
        "lost": lost,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nice_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--nice", type=int, default=10, help="the SEGCAM_WORKER_NICE compared with 0")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--factor", type=float, default=4.0, help="offered rate, in multiples of the in-process limit")
    ap.add_argument("--models", default="demo,realistic")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    bench = run.Bench(argparse.Namespace(threads=1, seconds=args.seconds))
    rows = []
    print(
        "| model | rate/s | round | worker nice | refusal p50 / p99 ms | accepted: answer p99 ms | accepted/s | lost |"
    )
    print("|---|---|---|---|---|---|---|---|")
    try:
        for key in args.models.split(","):
            model = run.MODELS[key][0]
            lim = bench.limit(model, key, args.seconds / 2)
            rate = args.factor * lim["images_per_s"]
            for i in range(args.rounds):
                for nice in (0, args.nice) if i % 2 == 0 else (args.nice, 0):
                    procs, url = bench.segcam(models=model, SEGCAM_MAX_QUEUE_DEPTH=8, SEGCAM_WORKER_NICE=nice)
                    try:
                        res = overload(url, bench.imgs[key], model, rate, args.seconds)
                    finally:
                        bench.cleanup(procs)
                    rows.append({"model": key, "rate_per_s": rate, "round": i + 1, "nice": nice, **res})
                    refusal = f"{res['refusal_p50_ms']:.1f} / {res['refusal_p99_ms']:.1f}"
                    cells = [key, f"{rate:.1f}", i + 1, nice, refusal, f"{res['accept_p99_ms']:.1f}",
                             f"{res['accepted_per_s']:.2f}", res["lost"]]  # fmt: skip
                    print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    finally:
        bench.close()
    out = run.RESULTS / f"nice_ab-{run.datetime.now(run.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps({"machine": run.machine(), "code": run.code_version(), "args": vars(args),
                               "rows": rows}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {Path(out).relative_to(run.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
