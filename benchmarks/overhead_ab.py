"""Low-load overhead of two commits, measured side by side in one run on one machine.

    python -m benchmarks.overhead_ab ab47116 HEAD          # demo model, 3 alternating rounds
    python -m benchmarks.overhead_ab ab47116 HEAD --model realistic --rounds 2
    python -m benchmarks.overhead_ab 72fdd98 HEAD --post-wait   # both have POST ?wait
    python -m benchmarks.overhead_ab 16a1d61 HEAD --raw         # POST ?wait from a raw-socket client
    python -m benchmarks.overhead_ab 72fdd98 HEAD --gateway     # accepted submissions/s instead
    python -m benchmarks.overhead_ab fc2244c HEAD --refusals    # refusals/s and their latency (a full queue)
    python -m benchmarks.overhead_ab fc2244c HEAD --overload 4  # refusal latency with a worker at 4x capacity
    python -m benchmarks.overhead_ab 5e47c7e HEAD --model realistic --clients 4 --post-wait  # saturated
    python -m benchmarks.overhead_ab HEAD~1 HEAD --hide-in-a hiredis --raw  # an optional package off in A
    python -m benchmarks.overhead_ab HEAD HEAD --raw --model realistic  # A/A: this machine's noise

Each commit is checked out in a temporary git worktree; its API and worker run from there
(this checkout's virtualenv), against the same Redis, images and client, one client waiting
with a long-poll ``GET ?wait`` after each 202 (every version of the API has that), or with
``--post-wait`` in the submission itself (``POST ?wait``, what ``make bench`` uses). Rounds
alternate between the commits, every other round in reverse order, so that the machine's
drift hits both and neither always runs second. Prints a table and writes
``benchmarks/results/overhead_ab-<utc-time>.json``.

Both commits run in this checkout's virtualenv, so a package that is installed is there for
both; ``--hide-in-a MODULE`` makes its import fail in the first commit's processes, which is how
a package that is used whenever it is installed (hiredis for redis-py) is compared with its
absence.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks import run


def labels(revisions: list[str]) -> list[str]:
    """What the two setups are called in the rounds and the table. The same revision twice is
    an A/A run: the ratio two setups of the same code give on this machine, which is the
    noise a real A/B ratio has to beat (0.90 once, docs/performance.md, stop 44)."""
    a, b = revisions
    return [f"{a} (A)", f"{b} (B)"] if a == b else [a, b]


def worktree(rev: str, parent: Path, name: str | None = None) -> Path:
    path = parent / (name or rev).replace("/", "_").replace(" ", "_")
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(path), rev], cwd=run.ROOT, check=True,
                   capture_output=True)  # fmt: skip
    return path


def hiding(modules: list[str], parent: Path) -> dict[str, str]:
    """The environment in which importing any of ``modules`` raises ImportError: a directory of
    stubs first on ``PYTHONPATH``, ahead of site-packages."""
    stubs = parent / "hidden"
    stubs.mkdir(exist_ok=True)
    for m in modules:
        (stubs / f"{m}.py").write_text(f"raise ImportError('{m} hidden by benchmarks.overhead_ab --hide-in-a')\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(stubs), os.environ.get("PYTHONPATH")]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.overhead_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("revisions", nargs=2, help="two git revisions, e.g. ab47116 HEAD")
    ap.add_argument("--model", choices=sorted(run.MODELS), default="demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--post-wait", action="store_true", help="wait with POST ?wait (commits from aa843fb on)")
    ap.add_argument("--raw", action="store_true", help="POST ?wait from a raw-socket client instead of httpx")
    ap.add_argument("--gateway", action="store_true", help="the gateway alone: accepted submissions/s, API CPU")
    ap.add_argument("--refusals", action="store_true", help="the gateway alone, its queue full: refusals/s")
    ap.add_argument("--overload", type=float, metavar="FACTOR",
                    help="open-loop arrivals at FACTOR x the in-process limit (queue bound 8): refusals")  # fmt: skip
    ap.add_argument("--clients", type=int, default=1, help="closed-loop clients; more than 1 saturates the worker")
    ap.add_argument("--hide-in-a", metavar="MODULE[,MODULE]",
                    help="these imports fail in the first commit's processes (an installed package off)")  # fmt: skip
    args = ap.parse_args(argv)
    bench = run.Bench(argparse.Namespace(threads=1, seconds=args.seconds))
    tmp = Path(tempfile.mkdtemp(prefix="segcam-ab-"))
    names = labels(args.revisions)
    trees = {name: worktree(rev, tmp, name) for name, rev in zip(names, args.revisions, strict=True)}
    envs = {names[0]: hiding(args.hide_in_a.split(","), tmp)} if args.hide_in_a else {}
    model, _ = run.MODELS[args.model]
    # with a full queue every answer but the first is a 429: all requests count
    rate, label = ("rps", "refusals") if args.refusals else ("accepted_per_s", "accepted")
    rows: dict[str, list[dict]] = {name: [] for name in names}
    if args.overload:
        return overload(args, bench, trees, rows, envs)

    def measure(rev: str, n: int) -> dict:
        if args.gateway or args.refusals:
            bench.run_gateway(max_depth=1 if args.refusals else 10**9)
            res = bench.out["sections"]["gateway"]
            print(f"round {n} {rev}: {res[rate]:.0f} {label}/s", flush=True)
            return res
        procs, url = bench.segcam(models=model)
        try:
            res = run.closed_loop(url, bench.imgs[args.model], model, args.clients, args.seconds,
                                  poll=not (args.post_wait or args.raw), raw=args.raw)  # fmt: skip
        finally:
            bench.cleanup(procs)
        print(f"round {n} {rev}: overhead p50 {res['overhead_ms']['p50']:.2f} ms, "
              f"{res['throughput_per_s']:.2f} images/s", flush=True)  # fmt: skip
        return res

    alternate(args.rounds, bench, trees, rows, measure, envs)
    if args.gateway or args.refusals:
        print(f"\n| commit | rounds | {label}/s (median of rounds) | p50 ms | p99 ms |\n|---|---|---|---|---|")
        summary = {rev: {k: statistics.median(r[k] for r in rs) for k in (rate, "p50_ms", "p99_ms")}
                   for rev, rs in rows.items()}  # fmt: skip
        for rev, s in summary.items():
            print(f"| {rev} | {args.rounds} | {s[rate]:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} |")
        a, b = names
        print(f"\n{label}/s ratio {b} / {a}: {summary[b][rate] / summary[a][rate]:.2f}")
        return _save(args, rows, summary)
    summary = overhead_table(rows, "commit")
    a, b = names
    print(
        f"\noverhead p50 ratio {b} / {a}: {summary[b]['overhead_p50'] / summary[a]['overhead_p50']:.2f}; "
        f"images/s ratio: {summary[b]['images_per_s'] / summary[a]['images_per_s']:.2f}"
    )
    return _save(args, rows, summary)


def overhead_table(rows: dict[str, list[dict]], what: str) -> dict[str, dict]:
    """Print each setup's medians over its rounds of ``run.closed_loop`` and return them."""
    print(f"\n| {what} | rounds | overhead p50 ms (median of rounds) | overhead p99 ms | end-to-end p50 ms "
          "| images/s |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    summary = {}
    for key, rs in rows.items():
        s = {k: statistics.median(r[k2][k3] for r in rs) for k, (k2, k3) in
             {"overhead_p50": ("overhead_ms", "p50"), "overhead_p99": ("overhead_ms", "p99"),
              "latency_p50": ("latency_ms", "p50")}.items()}  # fmt: skip
        s["images_per_s"] = statistics.median(r["throughput_per_s"] for r in rs)
        summary[key] = s
        print(f"| {key} | {len(rs)} | {s['overhead_p50']:.2f} | {s['overhead_p99']:.2f} | {s['latency_p50']:.1f} "
              f"| {s['images_per_s']:.2f} |")  # fmt: skip
    return summary


def alternate(rounds: int, bench: run.Bench, trees: dict[str, Path], rows: dict[str, list[dict]],
              measure: Callable[[str, int], dict], envs: dict[str, dict[str, str]] | None = None) -> None:  # fmt: skip
    """``measure(rev, round)`` for each commit in turn, each from its worktree, round after round,
    every other round in reverse order (A B, B A, ...), so that an order effect hits both. With
    a fixed order the first run of a pair was the faster saturated in 6 of 7 pairs, whichever
    commit it was (the same two commits in both orders, ``overhead_ab-20261201T145155Z.json`` and
    ``-145528Z.json``); in a later run the second was, in 4 of 4 (``-151451Z.json``). A commit's
    ``envs`` entry is in the environment while it is measured (its processes inherit it). Then
    the worktrees go, whatever happened."""
    saved = dict(os.environ)
    try:
        for i in range(rounds):
            order = list(trees.items())
            for rev, tree in reversed(order) if i % 2 else order:
                run.ROOT = tree  # processes start from the worktree
                os.environ.update((envs or {}).get(rev, {}))
                try:
                    rows[rev].append(measure(rev, i + 1))
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
    finally:
        bench.close()
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=Path(__file__).parents[1])


def overload(args: argparse.Namespace, bench: run.Bench, trees: dict[str, Path], rows: dict[str, list[dict]],
             envs: dict[str, dict[str, str]]) -> int:  # fmt: skip
    """Both commits' stacks (API and one worker, queue bound 8) under the same open-loop rate,
    ``--overload`` x the in-process limit measured once first: the latency of the refusals,
    and whether every accepted job completed."""
    model, _ = run.MODELS[args.model]
    imgs = bench.imgs[args.model]
    rate = args.overload * bench.limit(model, args.model, args.seconds / 2)["images_per_s"]

    def measure(rev: str, n: int) -> dict:
        procs, url = bench.segcam(models=model, SEGCAM_MAX_QUEUE_DEPTH=8)
        try:
            res = run.overload_segcam(url, imgs, model, rate, args.seconds)
        finally:
            bench.cleanup(procs)
        print(f"round {n} {rev}: refusal p50 {res['refusal_ms']['p50']:.1f} ms, "
              f"p99 {res['refusal_ms']['p99']:.1f} ms, lost {res['accepted_lost']}", flush=True)  # fmt: skip
        return {**res, "rate_per_s": rate}

    alternate(args.rounds, bench, trees, rows, measure, envs)
    print(f"\n{args.model} model at {rate:.1f}/s\n")
    print("| commit | rounds | refusal p50 ms (median of rounds) | refusal p99 ms | completed | lost |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for rev, rs in rows.items():
        summary[rev] = {"refusal_p50": statistics.median(r["refusal_ms"]["p50"] for r in rs),
                        "refusal_p99": statistics.median(r["refusal_ms"]["p99"] for r in rs),
                        "completed": sum(r["accepted_completed"] for r in rs),
                        "lost": sum(r["accepted_lost"] for r in rs)}  # fmt: skip
        s = summary[rev]
        cells = [rev, len(rs), f"{s['refusal_p50']:.1f}", f"{s['refusal_p99']:.1f}", s["completed"], s["lost"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    return _save(args, rows, summary)


def _save(args: argparse.Namespace, rows: dict, summary: dict) -> int:
    kind = ("overload" if args.overload else "refusals" if args.refusals else "gateway" if args.gateway
            else "overhead")  # fmt: skip
    run.save_result(f"{kind}_ab", args, {"rounds": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
