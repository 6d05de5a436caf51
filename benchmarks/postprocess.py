"""A batch's CPU stages (decoding and resizing; label maps, statistics, PNGs) by thread count
and batch size, side by side.

    python -m benchmarks.postprocess                       # threads 1, 2, 4; batches 1, 4, 8

On a GPU the forward and the CAM of a batch of 8 take milliseconds while the work before and
after them is CPU work, which ran image after image: this measures how much of it the
worker's thread pool (``SEGCAM_POSTPROCESS_THREADS``) takes back. The forward and the CAM run
once per model and batch; only the stages around them are timed, in alternating rounds so
that the machine's drift hits every variant. Every variant's results are checked (tensors
equal, artifacts byte for byte) against one thread's. Prints a table and writes
``benchmarks/results/postprocess-<utc-time>.json``. To compare two commits' pipelines, use
``python -m benchmarks.photo_ab A B --batch N``: each runs from its own checkout (this script
once imported an old ``worker/pipeline.py`` beside today's modules, which broke as soon as
the modules it calls changed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial

from benchmarks import run
from shared.imaging import decode_rgb
from shared.schemas import Method


def encode(pipe, images, out) -> list:
    return [(r.artifacts, r.classes, r.explanation) for r in pipe._postprocess(
        images, out.logits, out.cams, out.targets, Method.gradcam)]  # fmt: skip


def preprocess(pipe, data: list[bytes]):
    return pipe.preprocess(pipe._map(decode_rgb, data)).cpu()


def same(a, b) -> bool:
    import torch

    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def timed(variants: dict, rounds: int, per_call: int) -> dict[str, list[float]]:
    """ms per image of each variant, one figure per round; rounds alternate between variants."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0, n = time.perf_counter(), 0
            while n < 3 or time.perf_counter() - t0 < 0.5:
                fn()
                n += 1
            times[name].append(1000 * (time.perf_counter() - t0) / n / per_call)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.postprocess", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--threads", default="1,2,4", help="thread counts to compare")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--device", default="auto", help="where the model runs: auto (the first GPU if any), cpu, cuda:N")
    args = ap.parse_args(argv)
    import torch

    from shared.model_store import ModelStore
    from worker.cam import explain
    from worker.loader import load_model
    from worker.pipeline import Pipeline

    torch.set_num_threads(1)  # the forward's threads are not what is measured
    device = run.bench_device(args.device)
    bench = run.Bench(argparse.Namespace(threads=1, seconds=0))
    rows = []
    print(f"Device {device}; ms per image, median of {args.rounds} alternating rounds.\n")
    print("| model | batch | stage | variant | ms per image | speed-up |")
    print("|---|---|---|---|---|---|")
    try:
        for key, (model, _) in run.MODELS.items():
            ms = ModelStore(bench.store)
            loaded = load_model(ms, ms.resolve(model), torch.device(device))
            for b in map(int, args.batches.split(",")):
                data = [bench.imgs[key][i % len(bench.imgs[key])] for i in range(b)]
                images = [decode_rgb(d) for d in data]
                out = explain(loaded.module, loaded.target_layer, Pipeline(loaded).preprocess(images), [None] * b,
                              Method.gradcam, clock=time.perf_counter, input_grad=loaded.needs_input_grad)  # fmt: skip
                pipes = {
                    f"{n} thread{'s' if n > 1 else ''}": Pipeline(loaded, n) for n in map(int, args.threads.split(","))
                }
                stages = {
                    "decode + preprocess": {name: partial(preprocess, p, data) for name, p in pipes.items()},
                    "encode": {name: partial(encode, p, images, out) for name, p in pipes.items()},
                }
                for stage, variants in stages.items():
                    reference = None
                    for name, fn in variants.items():
                        got = fn()
                        reference = got if reference is None else reference
                        if not same(got, reference):
                            raise SystemExit(f"{key} batch {b} {stage}: {name} gives other results than one thread")
                    times = timed(variants, args.rounds, b)
                    base = statistics.median(times[next(iter(variants))])
                    for name, ts in times.items():
                        med = statistics.median(ts)
                        rows.append({"model": key, "batch": b, "stage": stage, "variant": name, "ms_per_image": med,
                                     "rounds_ms": ts, "speedup": base / med})  # fmt: skip
                        print(f"| {key} | {b} | {stage} | {name} | {med:.2f} | {base / med:.2f}x |", flush=True)
    finally:
        bench.close()
    run.save_result("postprocess", args, {"rows": rows}, device=device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
