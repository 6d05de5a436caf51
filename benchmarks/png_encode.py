"""What the worker's PNG writer (``worker/png.py``) saves against Pillow's, which wrote every
PNG artifact until stop 40.

    python -m benchmarks.png_encode [--model shapes] [--sizes 520x390,1920x1440,4032x3024] [--rounds 3]

Two tables, both measured here side by side in one run with the two writers alternating:

1. each artifact alone (mask, heatmap, PNG overlay): encode ms and KB, and the decoded pixels
   checked equal between the writers;
2. whole jobs through the worker's pipeline (decode to the three encoded artifacts), on a PNG
   upload (all three artifacts PNG) and on a JPEG upload (the overlay a JPEG), with the render
   functions as they were before (``BEFORE``) and as they are now.

Prints both tables and writes ``benchmarks/results/png_encode-<utc-time>.json``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from benchmarks.overlay_format import photo, shipped_model
from benchmarks.run import save_result
from shared.schemas import Method
from worker import render
from worker.pipeline import Item, Pipeline


def pillow_png(img: Image.Image) -> bytes:
    """``render.encode_png`` before stop 40: Pillow's writer, its per-row filter search."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _mask_before(labels: np.ndarray) -> bytes:
    img = Image.fromarray(labels.astype(np.uint8))
    img.putpalette(render._PALETTE_BYTES)
    return pillow_png(img)


def _heatmap_before(heat: np.ndarray) -> bytes:
    return pillow_png(Image.fromarray(heat))


def _overlay_before(image: Image.Image, heat: np.ndarray, media: str, jpeg_quality: int = 90) -> bytes:
    blended = render.overlay(image, heat)
    if media == render.PNG:
        return pillow_png(blended)
    buf = io.BytesIO()
    blended.save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue()


BEFORE = {"mask_png": _mask_before, "heatmap_png": _heatmap_before, "overlay_image": _overlay_before}
NOW = {name: getattr(render, name) for name in BEFORE}


@contextmanager
def writers(which: dict):
    """The pipeline calls ``render.<name>`` at run time, so swapping the module's functions
    swaps what a whole job uses."""
    saved = {name: getattr(render, name) for name in which}
    for name, fn in which.items():
        setattr(render, name, fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(render, name, fn)


def artifacts_for(w: int, h: int) -> dict[str, tuple]:
    """The three artifacts' inputs as a job at this size makes them: a bilinear CAM, label
    regions, the overlay of a photo."""
    rng = np.random.default_rng(0)
    low = Image.fromarray(rng.random((12, 16)).astype(np.float32)).resize((64, 48), Image.BICUBIC)
    cam = np.clip(np.asarray(low), 0, 1).astype(np.float32)
    heat = render.heatmap_u8(np.asarray(Image.fromarray(cam).resize((w, h), Image.BILINEAR)))
    image = Image.open(io.BytesIO(photo(w, h))).convert("RGB")
    labels = (heat // 64).astype(np.uint8)
    return {
        "mask": (labels,),
        "heatmap": (heat,),
        "overlay": (image, heat, render.PNG),
    }


def artifact_times(w: int, h: int, rounds: int) -> dict[str, dict]:
    fn_of = {"mask": "mask_png", "heatmap": "heatmap_png", "overlay": "overlay_image"}
    out = {}
    for art, args in artifacts_for(w, h).items():
        samples: dict[str, list[float]] = {"pillow": [], "segcam": []}
        made = {}
        for r in range(rounds + 1):
            for name, table in (("pillow", BEFORE), ("segcam", NOW))[:: 1 if r % 2 else -1]:
                t0 = time.perf_counter()
                made[name] = table[fn_of[art]](*args)
                if r:
                    samples[name].append((time.perf_counter() - t0) * 1000)
        a, b = (np.asarray(Image.open(io.BytesIO(made[k]))) for k in ("pillow", "segcam"))
        if not np.array_equal(a, b):
            raise AssertionError(f"{art} at {w}x{h}: the writers' pixels differ")
        out[art] = {k: {"ms_p50": round(statistics.median(v), 2), "kb": round(len(made[k]) / 1024, 1)}
                    for k, v in samples.items()}  # fmt: skip
    return out


def job_times(pipe: Pipeline, upload: bytes, rounds: int) -> dict[str, dict]:
    samples: dict[str, list[tuple[float, float]]] = {"pillow": [], "segcam": []}
    pixels = {}
    for r in range(rounds + 1):  # round 0 warms both and is not kept
        for name, table in (("pillow", BEFORE), ("segcam", NOW))[:: 1 if r % 2 else -1]:
            with writers(table):
                t0 = time.perf_counter()
                (res,) = pipe.run([Item(name, upload)], Method.gradcam)
                total = (time.perf_counter() - t0) * 1000
            pixels[name] = [np.asarray(Image.open(io.BytesIO(v))) for v in res.artifacts.values()]
            if r:
                samples[name].append((total, res.timings_ms["encode_ms"]))
    if not all(np.array_equal(a, b) for a, b in zip(pixels["pillow"], pixels["segcam"], strict=True)):
        raise AssertionError("a job's artifacts differ in their pixels between the writers")
    return {
        k: {
            "job_ms_p50": round(statistics.median(t for t, _ in v), 1),
            "encode_ms_p50": round(statistics.median(e for _, e in v), 1),
        }
        for k, v in samples.items()
    }


def _png_upload(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, "PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.png_encode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--model", default="shapes", help="a model in the store (the encode cost does not depend on it)")
    ap.add_argument("--sizes", default="520x390,1920x1440,4032x3024")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the worker's default on these VMs: 1)")
    ap.add_argument("--no-save", action="store_true", help="print the tables only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = Pipeline(shipped_model(args.model), 1, render.Overlay("auto"))
    arts = ["| image | artifact | Pillow ms | segcam ms | ratio | Pillow KB | segcam KB |", "|---" * 7 + "|"]
    jobs = ["| upload | Pillow job ms | segcam job ms | ratio | Pillow encode ms | segcam encode ms |"]
    jobs.append("|---" * 6 + "|")
    results = []
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        per_art = artifact_times(w, h, args.rounds)
        for art, v in per_art.items():
            p, s = v["pillow"], v["segcam"]
            arts.append(f"| {size} | {art} | {p['ms_p50']:.1f} | {s['ms_p50']:.1f} | {s['ms_p50'] / p['ms_p50']:.2f} | "
                        f"{p['kb']:,.0f} | {s['kb']:,.0f} |")  # fmt: skip
        jpeg = photo(w, h)
        per_job = {}
        for kind, upload in (("PNG", _png_upload(jpeg)), ("JPEG", jpeg)):
            v = per_job[kind] = job_times(pipe, upload, args.rounds)
            p, s = v["pillow"], v["segcam"]
            ratio = s["job_ms_p50"] / p["job_ms_p50"]
            jobs.append(f"| {size} {kind} | {p['job_ms_p50']:.1f} | {s['job_ms_p50']:.1f} | {ratio:.2f} | "
                        f"{p['encode_ms_p50']:.1f} | {s['encode_ms_p50']:.1f} |")  # fmt: skip
        results.append({"size": size, "artifacts": per_art, "jobs": per_job})
    print("\n".join(arts) + "\n\nthe same pixels from both writers\n")
    print("\n".join(jobs) + "\n\nevery job's artifacts the same pixels with both writers")
    if not args.no_save:
        save_result("png_encode", args, {"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
