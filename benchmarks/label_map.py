"""The upload-resolution label map and statistics as ``worker/labels.py`` makes them, against
the way the pipeline made them until stop 40, side by side.

    python -m benchmarks.label_map [--sizes 384x288,1280x960,1920x1440,4032x3024] [--rounds 5]

Before: every class's logits upsampled to the upload's size (C x H x W floats), argmax and top
probability per pixel; above C x H x W = 32 M, the model-resolution argmax upsampled by nearest
neighbour instead (no smooth edges). Now: only the cells on class boundaries are interpolated.

Logits: the demo model's on a photo-like upload (a trained model: real class regions), and
synthetic 21-class logits of the realistic model's resolution (384 x 384) with smooth regions
(the locally initialised realistic model predicts one class everywhere, no boundary to speak
of). Per size: ms p50 of each way, and how many pixels of each map differ from the full
upsampling's argmax (computed once, outside the timing). Prints a table and writes
``benchmarks/results/label_map-<utc-time>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.overlay_format import photo, shipped_model
from benchmarks.run import save_result
from shared.imaging import decode_rgb
from worker import labels
from worker.loader import LoadedModel
from worker.pipeline import Pipeline

BUDGET = 32_000_000  # the old pipeline's FULL_RES_LOGITS_BUDGET


def before(logits: torch.Tensor, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """``Pipeline._labels_and_stats`` until stop 40: labels and pixel counts (its statistics'
    arithmetic included, so the time is the whole of it)."""
    C = logits.shape[1]
    with torch.no_grad():
        if C * H * W <= BUDGET:
            scores = F.interpolate(logits.float(), size=(H, W), mode="bilinear", align_corners=False)[0]
        else:
            scores = logits[0].float().clone()
        top, pred = scores.max(0)
        conf = scores.sub_(top).exp_().sum(0).reciprocal_()
        pred_np = pred.to(torch.uint8).numpy()
        counts = np.bincount(pred_np.ravel(), minlength=C)
        torch.zeros(C).index_add_(0, pred.flatten(), conf.flatten())
        if pred_np.shape != (H, W):
            pred_np = np.asarray(Image.fromarray(pred_np).resize((W, H), Image.NEAREST))
    return pred_np, counts


def full_argmax(logits: torch.Tensor, H: int, W: int) -> np.ndarray:
    """The reference: every channel upsampled (a 12-megapixel, 21-class map: 1 GB, once)."""
    with torch.no_grad():
        full = F.interpolate(logits.float(), size=(H, W), mode="bilinear", align_corners=False)
        return full[0].argmax(0).to(torch.uint8).numpy()


def synthetic(C: int = 21, size: int = 384, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, C, 6, 6, generator=g) * 6
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def demo_logits(model: LoadedModel, w: int, h: int) -> torch.Tensor:
    pipe = Pipeline(model)
    with torch.no_grad():
        x = pipe.preprocess([decode_rgb(photo(w, h))])
        out = model.module(x)
    return (out["out"] if isinstance(out, dict) else out)[:1].float().contiguous()


def measure(logits: torch.Tensor, H: int, W: int, rounds: int) -> dict:
    ways = {"before": lambda: before(logits, H, W)[0], "now": lambda: labels.label_map(logits, H, W).labels}
    times: dict[str, list[float]] = {k: [] for k in ways}
    maps = {}
    for r in range(rounds + 1):  # round 0 warms both and is not kept
        for k in list(ways)[:: 1 if r % 2 else -1]:
            t0 = time.perf_counter()
            maps[k] = ways[k]()
            if r:
                times[k].append((time.perf_counter() - t0) * 1000)
    ref = full_argmax(logits, H, W)
    return {
        k: {"ms_p50": round(statistics.median(times[k]), 1), "pixels_off": int((maps[k] != ref).sum())} for k in ways
    } | {"nearest_fallback_before": logits.shape[1] * H * W > BUDGET}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.label_map", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--sizes", default="384x288,1280x960,1920x1440,4032x3024")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the worker's default on these VMs: 1)")
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [
        "| logits | upload | before ms | now ms | ratio | pixels off before | pixels off now |",
        "|---|---|---|---|---|---|---|",
    ]
    results, model = [], shipped_model("shapes")
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        cases = (("demo model, 4 classes", demo_logits(model, w, h)), ("synthetic, 21 classes", synthetic()))
        for name, logits in cases:
            got = measure(logits, h, w, args.rounds)
            b, n = got["before"], got["now"]
            note = " (nearest)" if got["nearest_fallback_before"] else ""
            rows.append(f"| {name} {tuple(logits.shape[2:])} | {size} | {b['ms_p50']:.1f}{note} | {n['ms_p50']:.1f} | "
                        f"{n['ms_p50'] / b['ms_p50']:.2f} | {b['pixels_off']:,} | {n['pixels_off']:,} |")  # fmt: skip
            results.append({"logits": name, "size": size, **got})
    print("\n".join(rows))
    print("\npixels off: label-map pixels that differ from the argmax of every channel upsampled")
    if not args.no_save:
        save_result("label_map", args, {"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
