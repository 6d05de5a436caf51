"""What a photo's overlay costs the worker as a PNG and as a JPEG, by image size.

    python -m benchmarks.overlay_format [--model shapes] [--sizes 640x480,1920x1440,4032x3024] [--rounds 3]

A segmentation service's users send photos: JPEGs of a few megapixels. Every artifact is made
at the upload's size, and a lossless overlay of a photo keeps its sensor noise and JPEG
artefacts at several times the upload's bytes: encoding time taken from the device, and Redis
memory held for ``SEGCAM_ARTIFACT_TTL_S``. This runs whole jobs through the worker's pipeline
(decode to the three encoded artifacts) on the same JPEG uploads with the overlay as a PNG
(``SEGCAM_OVERLAY_FORMAT=png``, the only choice before) and as a JPEG (``auto``, the default
now), alternating per job, and checks that the masks and heatmaps come out byte for byte the
same. The uploads are photo-like (smooth light, edges and fine texture), not noise.

A second table times the overlay's blend alone, as numpy computed it until stop 39 and as
Pillow does now (``render.overlay``), and checks the pixels are the same. Prints both tables
and writes ``benchmarks/results/overlay_format-<utc-time>.json``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageFilter

from benchmarks.run import ROOT, save_result
from shared.model_store import ModelStore
from shared.schemas import Method
from worker import render
from worker.loader import LoadedModel, load_model
from worker.pipeline import Item, Pipeline

VARIANTS = {
    "png (the only choice before)": render.Overlay("png"),
    "auto: jpeg q90 (default)": render.Overlay("auto", 90),
}


def photo(w: int, h: int, seed: int = 0) -> bytes:
    """A JPEG (quality 90, as cameras and phones write them) with a photo's structure: broad
    gradients of light, a few hard-edged objects, and fine texture with a little sensor noise."""
    rng = np.random.default_rng(seed)
    light = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    img = np.asarray(light, dtype=np.float32)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
        img[y0 : y0 + h // 4, x0 : x0 + w // 5] = rng.integers(0, 255, 3)
    texture = Image.fromarray(rng.integers(0, 255, (h // 4, w // 4), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    img += (np.asarray(texture, dtype=np.float32)[..., None] - 128) * 0.25 + rng.normal(0, 2.5, img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def shipped_model(name: str = "shapes") -> LoadedModel:
    """A model of the store this repository ships (``models/store``), on the CPU: what the photo
    benchmarks (this one, ``png_encode``, ``label_map``) run."""
    store = ModelStore(ROOT / "models" / "store")
    return load_model(store, store.resolve(name), torch.device("cpu"))


def measure(pipes: dict[str, Pipeline], upload: bytes, rounds: int) -> dict[str, dict]:
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in pipes}
    sizes: dict[str, dict[str, int]] = {}
    reference = None
    for r in range(rounds + 1):  # round 0 warms every variant and is not kept
        for name in list(pipes)[:: 1 if r % 2 else -1]:  # alternating order: drift hits both
            t0 = time.perf_counter()
            (res,) = pipes[name].run([Item(name, upload)], Method.gradcam)
            total = (time.perf_counter() - t0) * 1000
            lossless = (res.artifacts["mask"], res.artifacts["heatmap"])
            if reference is None:
                reference = lossless
            if lossless != reference:
                raise AssertionError(f"{name}: mask or heatmap differs from the other variant's")
            sizes[name] = {k: len(v) for k, v in res.artifacts.items()}
            if r:
                samples[name].append((total, res.timings_ms["encode_ms"]))
    return {
        k: {
            "job_ms_p50": round(statistics.median(t for t, _ in v), 1),
            "encode_ms_p50": round(statistics.median(e for _, e in v), 1),
            "overlay_kb": round(sizes[k]["overlay"] / 1024, 1),
            "artifacts_kb": round(sum(sizes[k].values()) / 1024, 1),
            "n": len(v),
        }
        for k, v in samples.items()
    }


def numpy_blend(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """The overlay as ``worker/render.py`` computed it before stop 39."""
    coloured = render.JET[heat].astype(np.uint16)
    blended = (coloured * 128 + np.asarray(image).astype(np.uint16) * 128) >> 8
    return Image.fromarray(blended.astype(np.uint8))


def blend_times(upload: bytes, rounds: int) -> dict[str, float]:
    image = Image.open(io.BytesIO(upload)).convert("RGB")
    w, h = image.size
    heat = render.heatmap_u8(np.outer(np.hanning(h), np.hanning(w)).astype(np.float32))
    ways = {"numpy (before)": numpy_blend, "Pillow (now)": render.overlay}
    out: dict[str, list[float]] = {k: [] for k in ways}
    made = {}
    for r in range(rounds + 1):
        for k, fn in ways.items():
            t0 = time.perf_counter()
            made[k] = np.asarray(fn(image, heat))
            if r:
                out[k].append((time.perf_counter() - t0) * 1000)
    if not np.array_equal(*made.values()):
        raise AssertionError("the two blends differ")
    return {k: round(statistics.median(v), 1) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.overlay_format", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--model", default="shapes", help="a model in the store (the encode cost does not depend on it)")
    ap.add_argument("--sizes", default="640x480,1920x1440,4032x3024")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the worker's default on these VMs: 1)")
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = shipped_model(args.model)
    pipes = {k: Pipeline(model, 1, v) for k, v in VARIANTS.items()}
    rows = [
        "| upload | overlay | job ms p50 | encode ms p50 | overlay KB | all artifacts KB |",
        "|---|---|---|---|---|---|",
    ]
    results, blends = [], ["| image | numpy blend ms (before) | Pillow blend ms (now) |", "|---|---|---|"]
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        upload = photo(w, h)
        got = measure(pipes, upload, args.rounds)
        blend = blend_times(upload, args.rounds)
        results.append({"size": size, "upload_kb": round(len(upload) / 1024, 1), "variants": got, "blend_ms": blend})
        blends.append(f"| {size} | {blend['numpy (before)']:.1f} | {blend['Pillow (now)']:.1f} |")
        for k, v in got.items():
            rows.append(f"| {size} JPEG, {len(upload) // 1024} KB | {k} | {v['job_ms_p50']:.1f} | "
                        f"{v['encode_ms_p50']:.1f} | {v['overlay_kb']:,.0f} | {v['artifacts_kb']:,.0f} |")  # fmt: skip
    print("\n".join(rows))
    print("\nmasks and heatmaps byte for byte the same in both variants\n")
    print("\n".join(blends) + "\n\nthe same pixels from both blends")
    if not args.no_save:
        save_result("overlay_format", args, {"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
