"""Low-load overhead with the guest's halt polling off and on, side by side in one run.

    sudo .venv/bin/python -m benchmarks.halt_poll_ab [--values 0,200000] [--rounds 2] [--raw]
    .venv/bin/python -m benchmarks.halt_poll_ab --spin [--model realistic] [--raw]

Why: on a KVM guest whose ``haltpoll`` cpuidle driver has ``guest_halt_poll_ns=0``, every
idle vCPU halts at once, so each short wait between two hops of a job (the API waiting on
Redis, the worker on its claim) ends in a wake-up from the host. The kernel's default is
200000 ns of polling first. This measures what that host setting is worth to ``make bench``'s
low-load overhead (the same stack, one client with ``POST ?wait``), alternating the values
round by round so that the machine's drift hits both, and puts the original value back
whatever happens. Needs root and the haltpoll driver; it changes a host-wide setting only
while it runs. Prints a table and writes ``benchmarks/results/halt_poll_ab-<utc-time>.json``.

``--spin`` asks the same question in its extreme form, without root or haltpoll: rounds
alternate between the host as it is and one busy loop per CPU at ``SCHED_IDLE`` priority,
which keeps every vCPU from halting while any other thread preempts it at once (the
low-latency trick of polling instead of sleeping).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import run
from benchmarks.overhead_ab import overhead_table
from benchmarks.wake import idle_driver

PARAM = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
SPINNER = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True:\n    pass\n"


@contextlib.contextmanager
def spinners(n: int):
    """``n`` busy loops at SCHED_IDLE priority, killed on the way out whatever happens."""
    procs = [subprocess.Popen([sys.executable, "-c", SPINNER]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def low_load(bench: run.Bench, args: argparse.Namespace) -> dict:
    """One round: a fresh stack, one client with ``POST ?wait`` for ``args.seconds``."""
    model, _ = run.MODELS[args.model]
    procs, url = bench.segcam(models=model)
    try:
        return run.closed_loop(url, bench.imgs[args.model], model, 1, args.seconds, poll=False, raw=args.raw)
    finally:
        bench.cleanup(procs)


def spin_ab(args: argparse.Namespace) -> int:
    bench = run.Bench(argparse.Namespace(threads=1, seconds=args.seconds))
    rows: dict[str, list[dict]] = {"halting": [], "spinning": []}
    try:
        for n in range(1, args.rounds + 1):
            for mode in rows:
                with spinners((os.cpu_count() or 1) if mode == "spinning" else 0):
                    res = low_load(bench, args)
                rows[mode].append(res)
                print(f"round {n} {mode}: overhead p50 {res['overhead_ms']['p50']:.2f} ms", flush=True)
    finally:
        bench.close()
    summary = overhead_table(rows, "idle vCPUs")
    print(f"\noverhead p50 ratio spinning / halting: "
          f"{summary['spinning']['overhead_p50'] / summary['halting']['overhead_p50']:.2f}")  # fmt: skip
    return _save(args, {"rounds": rows, "summary": summary})


def _save(args: argparse.Namespace, body: dict) -> int:
    run.save_result("halt_poll_ab", args, body)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.halt_poll_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--values", default="0,200000", help="guest_halt_poll_ns values to alternate")
    ap.add_argument("--model", choices=sorted(run.MODELS), default="demo")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--raw", action="store_true", help="POST ?wait from a raw-socket client instead of httpx")
    ap.add_argument("--spin", action="store_true", help="halting vCPUs against SCHED_IDLE busy loops (no root)")
    args = ap.parse_args(argv)
    if args.spin:
        return spin_ab(args)
    values = [int(v) for v in args.values.split(",")]
    if idle_driver().get("cpuidle") != "haltpoll" or not PARAM.exists():
        print("this host's cpuidle driver is not haltpoll: nothing to compare", file=sys.stderr)
        return 2
    original = PARAM.read_text().strip()
    try:
        PARAM.write_text(original)
    except OSError as e:
        print(f"cannot write {PARAM} ({e.strerror}): run as root", file=sys.stderr)
        return 2
    bench = run.Bench(argparse.Namespace(threads=1, seconds=args.seconds))
    rows: dict[str, list[dict]] = {str(v): [] for v in values}
    try:
        for n in range(1, args.rounds + 1):
            for v in values:
                PARAM.write_text(str(v))
                res = low_load(bench, args)
                rows[str(v)].append(res)
                print(f"round {n} guest_halt_poll_ns={v}: overhead p50 {res['overhead_ms']['p50']:.2f} ms", flush=True)
    finally:
        PARAM.write_text(original)
        bench.close()
    summary = overhead_table(rows, "guest_halt_poll_ns")
    a, b = (str(v) for v in values[:2])
    print(f"\noverhead p50 ratio {b} / {a}: {summary[b]['overhead_p50'] / summary[a]['overhead_p50']:.2f}"
          f" (guest_halt_poll_ns back at {original})")  # fmt: skip
    return _save(args, {"original": original, "rounds": rows, "summary": summary})


if __name__ == "__main__":
    sys.exit(main())
