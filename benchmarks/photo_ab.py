"""Whole photo jobs through the worker's pipeline at two commits, side by side in one run.

    python -m benchmarks.photo_ab 5a7a159 HEAD [--sizes 1280x960,1920x1440,4032x3024] [--rounds 4]
    python -m benchmarks.photo_ab 5a7a159 HEAD --model realistic --sizes 384x288,1920x1440
    python -m benchmarks.photo_ab 5a7a159 HEAD --batch 8 --sizes 384x288   # jobs run as batches of 8

``make bench`` sends PNGs at the model's input size; users send photos, and every artifact is
made at the upload's size. Each commit is checked out in a temporary git worktree and runs, in
a process of its own, ``Pipeline.run`` on the same photo-like uploads (a JPEG and a PNG of each
size; the demo model or ``make bench``'s realistic one, one torch thread, the worker's default
settings), a few jobs per upload, each job ``--batch`` copies of the upload run as one batch;
rounds alternate between the commits, every other round in reverse order. Prints ms per image
p50 per upload and commit, and writes ``benchmarks/results/photo_ab-<utc-time>.json``.

This is the way to compare the pipeline of two commits: a commit's modules run only beside
each other, so each side runs from its own checkout (``benchmarks.postprocess`` compares
thread counts and batch sizes within one commit).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import run
from benchmarks.overhead_ab import worktree

# Run inside a worktree: the commit's own pipeline and render, this checkout's interpreter.
CHILD = r"""
import io, json, sys, time, torch
from PIL import Image
torch.set_num_threads(1)
from benchmarks.overlay_format import photo
from shared.model_store import ModelStore
from shared.schemas import Method
from worker import render
from worker.loader import load_model
from worker.pipeline import Item, Pipeline
sizes, jobs, which, batch = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if which == "realistic":  # built as make bench builds it: locally initialised weights
    import pathlib, tempfile
    from benchmarks.run import build_store
    store = ModelStore(build_store(pathlib.Path(tempfile.mkdtemp())))
    name = "deeplab"
else:
    store, name = ModelStore("models/store"), "shapes"
model = load_model(store, store.resolve(name), torch.device("cpu"))
kw = {"overlay": render.Overlay("auto", 90)} if hasattr(render, "Overlay") else {}
pipe = Pipeline(model, 1, **kw)
out = {}
for size in sizes:
    w, h = map(int, size.split("x"))
    jpeg = photo(w, h)
    buf = io.BytesIO(); Image.open(io.BytesIO(jpeg)).save(buf, "PNG")
    for kind, data in (("JPEG", jpeg), ("PNG", buf.getvalue())):
        items = [Item(f"j{i}", data) for i in range(batch)]
        assert len(pipe.run(items, Method.gradcam)) == batch  # untimed: first-call costs
        times = []
        for _ in range(jobs):
            t0 = time.perf_counter()
            pipe.run(items, Method.gradcam)
            times.append((time.perf_counter() - t0) * 1000 / batch)
        out[f"{size} {kind}"] = times
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.photo_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("revisions", nargs=2, help="two git revisions, e.g. 5a7a159 HEAD")
    ap.add_argument("--sizes", default="1280x960,1920x1440,4032x3024")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=3, help="timed jobs per upload, commit and round")
    ap.add_argument("--model", choices=["demo", "realistic"], default="demo")
    ap.add_argument("--batch", type=int, default=1, help="images per job, run as one batch; times are per image")
    args = ap.parse_args(argv)
    samples: dict[str, dict[str, list[float]]] = {rev: {} for rev in args.revisions}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: worktree(rev, Path(tmp)) for rev in args.revisions}
        try:
            for r in range(args.rounds):
                for rev in args.revisions[:: 1 if r % 2 == 0 else -1]:
                    env = {**os.environ, "PYTHONPATH": str(trees[rev])}
                    cmd = [sys.executable, "-c", CHILD, args.sizes, str(args.jobs), args.model, str(args.batch)]
                    got = json.loads(subprocess.run(cmd, cwd=trees[rev], check=True, capture_output=True, text=True,
                                                    env=env).stdout)  # fmt: skip
                    for k, v in got.items():
                        samples[rev].setdefault(k, []).extend(v)
                    print(f"round {r + 1} {rev}: " + ", ".join(f"{k} {statistics.median(v):.0f} ms"
                                                             for k, v in got.items()), flush=True)  # fmt: skip
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=run.ROOT)
    a, b = args.revisions
    unit = "job ms" if args.batch == 1 else f"ms per image, batch {args.batch},"
    rows = [f"| upload | {a} {unit} p50 | {b} {unit} p50 | ratio |", "|---|---|---|---|"]
    table = {}
    for k in samples[a]:
        pa, pb = statistics.median(samples[a][k]), statistics.median(samples[b][k])
        table[k] = {a: round(pa, 1), b: round(pb, 1), "ratio": round(pb / pa, 3), "n": len(samples[a][k])}
        rows.append(f"| {k} | {pa:.1f} | {pb:.1f} | {pb / pa:.2f} |")
    print("\n" + "\n".join(rows))
    run.save_result("photo_ab", args, {"results": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
