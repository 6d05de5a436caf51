"""Where a saturated worker's main thread spends its time: inside the pipeline, or between jobs.

    python -m benchmarks.saturated_profile                    # demo model, 4 clients
    python -m benchmarks.saturated_profile --model realistic
    python -m benchmarks.saturated_profile --model realistic --set SEGCAM_DRAIN_S=10

Saturation efficiency is segcam's throughput against the pipeline alone in a loop. The gap
has two parts: the pipeline's own stages running slower beside the gateway, Redis and the
clients (the run's per-stage split says how much), and what the worker's main thread does
between one job's Grad-CAM and the next job's decode (claims, round trips, the wait for the
finishing lane). This samples the pool child's threads with py-spy (wall clock, idle
included) while closed-loop clients keep its queue full, and buckets the main thread's samples
by the deepest segcam function on the stack. Prints a table; writes
``benchmarks/results/saturated_profile-<utc-time>.json``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import run

OURS = ("worker/", "shared/")
PIPELINE = "Pipeline.compute"  # a main-thread sample under it is inside decode .. Grad-CAM


def _frame(frame: str) -> tuple[str, str]:
    """``'name (path:line)'`` as py-spy's raw format writes a frame: the name and the path."""
    name, _, rest = frame.partition(" (")
    return name, rest.rpartition(":")[0]


def buckets(raw_lines, thread: str = "MainThread") -> tuple[int, dict[tuple[str, str], int]]:
    """py-spy's raw (collapsed) output: ``thread (tid): name;frame;frame... count`` per line.
    Returns the thread's sample count, and its samples per (place, deepest segcam function),
    where place is "pipeline" under ``Pipeline.compute`` and "between jobs" elsewhere."""
    total, out = 0, collections.Counter()
    for line in raw_lines:
        stack, _, count = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or thread not in frames[0]:
            continue
        n = int(count)
        total += n
        names = [_frame(f) for f in frames[1:]]
        ours = [name for name, path in names if path.startswith(OURS)]
        place = "pipeline" if any(name == PIPELINE for name, _ in names) else "between jobs"
        out[(place, ours[-1] if ours else "(Celery, outside segcam)")] += n
    return total, dict(out)


def table(total: int, counts: dict[tuple[str, str], int], ms_per_job: float, top: int = 14) -> str:
    rows = ["| where | deepest segcam function | share of the main thread | ms per job |", "|---|---|---|---|"]
    for place in ("pipeline", "between jobs"):
        share = sum(n for (p, _), n in counts.items() if p == place) / total
        rows.append(f"| **{place}** | (all) | **{100 * share:.1f} %** | **{share * ms_per_job:.2f}** |")
    for (place, fn), n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(f"| {place} | `{fn}` | {100 * n / total:.1f} % | {n / total * ms_per_job:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.saturated_profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--model", choices=sorted(run.MODELS), default="demo")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=15.0, help="how long py-spy samples")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--set", action="append", default=[], metavar="SEGCAM_X=V", help="a setting for the stack")
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    bench = run.Bench(argparse.Namespace(threads=1, seconds=args.seconds))
    model, _ = run.MODELS[args.model]
    raw = Path(tempfile.mkdtemp(prefix="segcam-spy-")) / "raw.txt"
    settings = {"SEGCAM_MAX_BATCH_SIZE": "1", **dict(kv.split("=", 1) for kv in args.set)}
    procs, url = bench.segcam(workers=1, models=model, **settings)
    try:
        child = run.process_tree(procs.procs["worker0"].pid)[-1]  # the pool child runs the tasks
        loop: dict = {}
        clients = threading.Thread(target=lambda: loop.update(
            run.closed_loop(url, bench.imgs[args.model], model, args.clients, args.seconds + 8)))  # fmt: skip
        clients.start()
        time.sleep(4)  # the queue fills and the task drains it
        subprocess.run([spy, "record", "--pid", str(child), "--duration", str(int(args.seconds)), "--rate",
                        str(args.rate), "--idle", "--threads", "--nonblocking", "--format", "raw", "--output",
                        str(raw)], check=True, capture_output=True)  # fmt: skip
        clients.join()
    finally:
        bench.cleanup(procs)
        bench.close()
    total, counts = buckets(raw.read_text().splitlines())
    rate = loop["throughput_per_s"]
    ms_per_job = 1000 / rate
    print(f"{args.model} model, one worker, {args.clients} clients, {settings}: {rate:.2f} images/s "
          f"({ms_per_job:.1f} ms per job), stages p50 {loop['stage_ms_p50']}; {total} main-thread samples")  # fmt: skip
    print()
    print(table(total, counts, ms_per_job))
    record = {"model": args.model, "clients": args.clients, "settings": settings, "throughput_per_s": rate,
              "stage_ms_p50": loop["stage_ms_p50"], "main_thread_samples": total,
              "samples": [[p, f, n] for (p, f), n in counts.items()]}  # fmt: skip
    run.save_result("saturated_profile", args, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
