"""Saturation efficiency on the realistic model with and without CPU pinning, side by side.

    python -m benchmarks.pinning_ab            # 2 alternating rounds, ~4 minutes

Prints a table and writes ``benchmarks/results/pinning_ab-<utc-time>.json``.

Pinned: the worker (parent, pool child, every thread) on core 1; the API, Redis and the
clients on core 0. Unpinned: the scheduler's choice. Each round measures the in-process limit
right before its segcam run. Written to answer whether pinning closes the efficiency gap on a
2-core machine (docs/performance.md, finding 2: it did not, so nothing is pinned).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from benchmarks import run


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` and its descendants (sched_setaffinity applies per thread)."""
    for p in run.process_tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def redis_pids() -> list[int]:
    return [int(p) for p in subprocess.run(["pgrep", "redis-server"], capture_output=True, text=True).stdout.split()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pinning_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print("needs at least 2 cores")
        return 1
    import torch

    torch.set_num_threads(1)
    bench = run.Bench(argparse.Namespace(threads=1, seconds=args.seconds))
    model, _ = run.MODELS["realistic"]
    imgs = bench.imgs["realistic"]
    everywhere = set(range(os.cpu_count() or 2))
    rows = []
    print("| round | pinned | limit images/s | segcam images/s | efficiency | compute p50 ms |")
    print("|---|---|---|---|---|---|")
    try:
        for i in range(args.rounds):
            for pinned in (False, True):
                lim = bench.limit(model, "realistic", args.seconds / 2)
                lim.pop("reference")
                procs, url = bench.segcam(models=model)
                try:
                    if pinned:
                        pin(procs.procs["worker0"].pid, {1})
                        for name, p in procs.procs.items():
                            if name != "worker0":
                                pin(p.pid, {0})
                        for p in [*redis_pids(), os.getpid()]:
                            pin(p, {0})
                    res = run.closed_loop(url, imgs, model, 4, args.seconds)
                finally:
                    bench.cleanup(procs)
                    for p in [*redis_pids(), os.getpid()]:
                        pin(p, everywhere)
                eff = res["throughput_per_s"] / lim["images_per_s"]
                rows.append({"round": i + 1, "pinned": pinned, "limit_images_per_s": lim["images_per_s"],
                             "segcam_images_per_s": res["throughput_per_s"], "efficiency": eff,
                             "compute_ms_p50": res["compute_ms_p50"]})  # fmt: skip
                cells = [i + 1, "yes" if pinned else "no", f"{lim['images_per_s']:.2f}",
                         f"{res['throughput_per_s']:.2f}", f"{eff:.3f}", f"{res['compute_ms_p50']:.1f}"]  # fmt: skip
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    finally:
        bench.close()
    run.save_result("pinning_ab", args, {"rounds": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
