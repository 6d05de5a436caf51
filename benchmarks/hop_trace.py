"""One job's path through the stack, hop by hop, from timestamps taken inside each process.

    python -m benchmarks.hop_trace [--jobs 100] [--httpx] [--gap-ms 50] [--model realistic] [--workers 2]

Starts the API and a worker with ``benchmarks/tracing`` on their PYTHONPATH (its
sitecustomize wraps the functions at each hop's edges), sends sequential jobs (the demo
model, or ``make bench``'s realistic one with its images) with ``POST ?wait`` from a
raw-socket client (``--httpx``: from httpx), and prints the p50 and p90 of each hop. Finer
than ``make profile``'s table (which reads the job record's timestamps): it splits the
worker's delivery into the Celery parent's receipt, its unacked write and the pool child's
start, or shows the lingering task hearing of the job (``worker/linger.py``). Redis DB 12,
key prefix ``hoptrace``, unless told otherwise. ``--worst N`` adds every hop of the N jobs
with the largest overhead; ``--warmup 0`` counts a fresh stack's first jobs too. Writes the
table to ``benchmarks/results/hop_trace-<utc-time>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.loadgen import RawClient, multipart_request
from stack.local import LocalStack

HERE = Path(__file__).parent
# (from, to, what happens in between); each label's first mark of a job, "event<" its last.
HOPS = [
    ("sent", "recv>", "client -> API: first bytes read by uvicorn"),
    ("recv>", "form>", "API: HTTP parse, middleware, routing, dependencies"),
    ("form>", "create>", "API: multipart, validation, message built"),
    ("create>", "create<", "API: create (upload SET + script, one MULTI round trip)"),
    ("create<", "brpop<", "worker parent: BRPOP wake, message to Celery request, unacked write"),
    ("unacked>", "unacked<", "  of which: kombu's unacked write (a round trip)"),
    ("brpop<", "take>", "worker: hand-off to the pool child, task start"),
    ("take>", "take<", "worker child: claim + records + upload (one round trip when the hint hits)"),
    ("take<", "compute>", "worker child: to the pipeline"),
    ("create<", "heard", "lingering worker child hears the submission (instead of the three hops above)"),
    ("heard", "compute>", "worker child: claim + records + upload, to the pipeline"),
    ("compute<", "finish>", "worker child: compute's output to the finishing half (inline at low load)"),
    ("finish<", "complete>", "worker child: result record built"),
    ("complete>", "complete<", "worker child: artifacts + finish script (one round trip)"),
    ("complete<", "event<", "Redis pub/sub -> API event hub"),
    ("event<", "send>", "API: record from the event, view, JSON"),
    ("send>", "answered", "API -> client: response read"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.hop_trace", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--httpx", action="store_true", help="send with httpx instead of the raw-socket client")
    ap.add_argument("--gap-ms", type=float, default=50.0, help="pause between jobs (idle processes go cold)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (each lingers after its jobs)")
    ap.add_argument("--model", choices=["demo", "realistic"], default="demo",
                    help="realistic: deeplabv3_mobilenet_v3_large at 384 px, as in make bench")  # fmt: skip
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--prefix", default="hoptrace", help="key prefix of the stack's jobs and queues")
    ap.add_argument("--warmup", type=int, default=10, metavar="N",
                    help="jobs left out of the tables (0: a fresh stack's first jobs count)")  # fmt: skip
    ap.add_argument("--worst", type=int, default=0, metavar="N",
                    help="also print each hop of the N jobs with the largest overhead (where a p99 goes)")  # fmt: skip
    ap.add_argument("--no-save", action="store_true", help="print the tables only")
    args = ap.parse_args(argv)
    from benchmarks.run import MODELS, build_store, images

    trace = Path(tempfile.mkdtemp(prefix="segcam-trace-")) / "trace.log"
    name, size = MODELS[args.model]
    img = images(size, 1)[0]
    extra = {}
    if args.model == "realistic":
        extra = {"SEGCAM_MODEL_DIR": str(build_store(trace.parent / "store"))}
    env = {**extra, "SEGCAM_REDIS_URL": args.redis_url, "SEGCAM_KEY_PREFIX": args.prefix,
           "SEGCAM_DEVICE": "cpu", "SEGCAM_TORCH_THREADS": "1", "SEGCAM_LOG_LEVEL": "WARNING",
           "PYTHONPATH": str(HERE / "tracing"), "SEGCAM_TRACE_FILE": str(trace)}  # fmt: skip
    jobs: list[dict[str, float]] = []
    with (
        LocalStack(env=env, workers=args.workers, log_dir=trace.parent) as s,
        httpx.Client(base_url=s.url) as c,
        RawClient(s.url) as rc,
    ):
        request = multipart_request(f"{s.url}/v1/jobs?wait=30", img, {"model": name})
        for _ in range(args.jobs):
            with open(trace, "a") as f:
                f.write("job\n")
            t0 = time.time()
            if args.httpx:
                form = {"model": name}
                j = c.post("/v1/jobs", files={"image": ("a.png", img)}, data=form, params={"wait": 30}).json()
            else:
                j = json.loads(rc.send(request)[1])
            t1 = time.time()
            jobs.append({"sent": t0, "answered": t1, "compute": j["result"]["timings_ms"]["total_ms"] / 1000})
            time.sleep(args.gap_ms / 1000)
    marks = job_marks(trace.read_text())
    rows = [{**m, **j} for m, j in zip(marks, jobs, strict=True)][args.warmup :]
    client = "httpx" if args.httpx else "raw-socket"
    heard = sum("heard" in r for r in rows)
    print(
        f"{len(rows)} jobs, {args.workers} worker(s): {heard} claimed by a lingering task, "
        f"{len(rows) - heard} delivered by Celery\n"
    )
    figures = hop_figures(rows)
    print(f"| hop ({args.model} model, {client} client, {args.gap_ms:.0f} ms between jobs) | p50 ms | p90 ms |")
    print("|---|---|---|")
    for what, f in figures.items():
        print(f"| {what} | {f['p50_ms']:.2f} | {f['p90_ms']:.2f} |")
    if args.worst > 0:
        print(worst_table(rows, args.worst))
    if not args.no_save:
        from benchmarks.run import save_result

        save_result("hop_trace", args, {"jobs": len(rows), "claimed_by_lingering": heard, "hops": figures})
    return 0


def hop_figures(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50 and p90 milliseconds of each hop some job crossed, in path order, then compute and
    overhead (end to end less compute)."""
    out = {}
    spans = [(what, lambda r, a=a, b=b: r[b] - r[a] if a in r and b in r else None) for a, b, what in HOPS]
    spans += [("compute (decode .. encode, timings_ms.total_ms)", lambda r: r["compute"]),
              ("overhead (end to end - compute)", overhead)]  # fmt: skip
    for what, span in spans:
        d = sorted(s * 1000 for r in rows if (s := span(r)) is not None)
        if d:
            out[what] = {"p50_ms": round(statistics.median(d), 3), "p90_ms": round(d[int(0.9 * len(d))], 3)}
    return out


def job_marks(trace: str) -> list[dict[str, float]]:
    """Each job's marks from the trace file: a label's first mark after the job's ``job`` line
    (``event<``: its last), and a call's end only where its start is the job's too, since
    another process may still be writing the last job's trailing marks (its reply read after
    the client already sent the next job)."""
    marks: list[dict[str, float]] = []
    for line in trace.splitlines():
        if line == "job":
            marks.append({})
        elif marks:
            t, _pid, label = line.split()
            if label.endswith("<") and f"{label[:-1]}>" not in marks[-1]:
                continue
            if label not in marks[-1] or label == "event<":
                marks[-1][label] = float(t)
    for m in marks:  # a job a lingering task claimed: its take marks may be the last job's trailing look
        if "heard" in m:
            for label in ("brpop<", "unacked>", "unacked<", "take>", "take<"):
                m.pop(label, None)
    return marks


def overhead(r: dict[str, float]) -> float:
    return r["answered"] - r["sent"] - r["compute"]


def worst_table(rows: list[dict[str, float]], n: int) -> str:
    """Every hop of the ``n`` jobs with the largest overhead, beside the median job's: a p99
    is one or two jobs in a low-load run, and this says which hop they paid it in."""
    worst = sorted(rows, key=overhead, reverse=True)[:n]
    median = sorted(rows, key=overhead)[len(rows) // 2]
    cols = [median, *worst]
    out = ["", f"| hop (ms) | median job | {' | '.join(f'worst {i + 1}' for i in range(len(worst)))} |",
           "|---|" + "---|" * len(cols)]  # fmt: skip
    for a, b, what in HOPS:
        if any(a in r and b in r for r in cols):
            cells = [f"{(r[b] - r[a]) * 1000:.2f}" if a in r and b in r else "-" for r in cols]
            out.append(f"| {what} | {' | '.join(cells)} |")
    for what, f in (("compute (timings_ms.total_ms)", lambda r: r["compute"]), ("overhead", overhead)):
        out.append(f"| {what} | {' | '.join(f'{f(r) * 1000:.2f}' for r in cols)} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
