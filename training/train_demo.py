"""Train the demo "shapes" model and write it into the model store with its card.

    python -m training.train_demo --out models/store/shapes/1

Deterministic from --seed (same seed, same torch build, same thread count: same
weights). Scenes are generated on the fly, so there is no data set to download.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.metrics import confusion, iou_per_class, mean_iou
from training.shapes import LABELS, held_out, make_scene
from worker.archs.shapes_unet import ShapesUNet

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def to_tensor(images: list, mean=MEAN, std=STD) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def batch(seeds: range, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = [make_scene(s, size=size) for s in seeds]
    x = to_tensor([s.image for s in scenes])
    y = torch.from_numpy(np.stack([s.mask for s in scenes]).astype(np.int64))
    return x, y


@torch.no_grad()
def evaluate(model: torch.nn.Module, n: int, size: int) -> np.ndarray:
    model.eval()
    conf = np.zeros((len(LABELS), len(LABELS)), dtype=np.int64)
    scenes = held_out(n, size=size)
    for i in range(0, n, 50):
        chunk = scenes[i : i + 50]
        pred = model(to_tensor([s.image for s in chunk])).argmax(1).numpy()
        for p, s in zip(pred, chunk, strict=True):
            conf += confusion(p, s.mask, len(LABELS))
    return conf


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("models/store/shapes/1"))
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-images", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    return ap


def training_seeds(seed: int, steps: int, batch_size: int) -> range:
    """Scene seeds used for training; held-out scenes start at HELD_OUT_SEED_BASE, far above."""
    first = seed * 1_000_000
    return range(first, first + steps * batch_size)


def main() -> None:
    args = build_parser().parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = ShapesUNet(num_classes=len(LABELS), width=args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)
    started = time.time()
    for step in range(args.steps):
        model.train()
        seeds = training_seeds(args.seed, args.steps, args.batch_size)
        x, y = batch(seeds[step * args.batch_size : (step + 1) * args.batch_size], args.size)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} {time.time() - started:6.0f}s", flush=True)
    train_s = time.time() - started

    conf = evaluate(model, args.eval_images, args.size)
    ious = iou_per_class(conf)
    miou = mean_iou(conf)
    print(f"held-out mIoU {miou:.4f} per class {np.round(ious, 4).tolist()}")

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "weights.pt"
    torch.save(model.state_dict(), weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    command = (
        "python -m training.train_demo "
        f"--out {args.out} --steps {args.steps} --batch-size {args.batch_size} --size {args.size} "
        f"--width {args.width} --lr {args.lr} --seed {args.seed} --threads {args.threads}"
    )
    manifest = {
        "name": args.out.parent.name,
        "version": args.out.name,
        "architecture": "shapes_unet",
        "format": "state_dict",
        "arch_kwargs": {"width": args.width},
        "labels": list(LABELS),
        "input_size": [args.size, args.size],
        "normalization": {"mean": list(MEAN), "std": list(STD)},
        "target_layer": "dec1",
        "weights_file": weights.name,
        "sha256": sha,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metadata": {
            "dataset": "training.shapes synthetic scenes (seeded, generated on the fly)",
            "train_images": args.steps * args.batch_size,
            "train_seconds": round(train_s),
            "heldout_images": args.eval_images,
            "heldout_miou": round(miou, 4),
            "heldout_iou_per_class": dict(zip(LABELS, [round(float(v), 4) for v in ious], strict=True)),
            "command": command,
            "torch": torch.__version__,
            "machine": f"{platform.machine()} {args.threads} threads",
        },
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (args.out / "MODEL_CARD.md").write_text(model_card(manifest))
    print(f"wrote {weights} sha256 {sha}")


def model_card(m: dict) -> str:
    meta = m["metadata"]
    per_class = "\n".join(f"| {k} | {v:.4f} |" for k, v in meta["heldout_iou_per_class"].items())
    return f"""# Model card: {m["name"]} version {m["version"]}

A small U-Net (`worker/archs/shapes_unet.py`) that segments synthetic scenes of shapes on
textured backgrounds. It exists so that segcam can be run and tested end to end where no
pretrained weights can be downloaded; it is not a model of natural images.

| field | value |
|---|---|
| labels | {", ".join(f"{i}={label}" for i, label in enumerate(m["labels"]))} |
| input size | {m["input_size"][0]}x{m["input_size"][1]} RGB (images are resized to it) |
| normalisation | (x / 255 - mean) / std, mean {m["normalization"]["mean"]}, std {m["normalization"]["std"]} |
| Grad-CAM target layer | `{m["target_layer"]}` |
| weights | `{m["weights_file"]}`, sha256 `{m["sha256"]}` |
| training data | {meta["dataset"]}, {meta["train_images"]} images |
| training time | {meta["train_seconds"]} s on {meta["machine"]}, torch {meta["torch"]} |
| held-out mIoU | **{meta["heldout_miou"]:.4f}** on {meta["heldout_images"]} scenes (seeds from 10,000,000) |

Per-class IoU on the held-out scenes:

| class | IoU |
|---|---|
{per_class}

Reproduce with:

```
{meta["command"]}
```

Scenes: 1 to 4 shapes (circle, square, triangle) of random colour, size, rotation and position,
overlapping, on gradient, stripe, checkerboard or blob textures with noise and blur
(`training/shapes.py`).
"""


if __name__ == "__main__":
    main()
