"""Synthetic "shapes" scenes: the data the demo model is trained and tested on.

Every scene is a pure function of its seed, so the held-out set used by the
explanation tests and the model card is reproducible bit for bit. Only numpy and
Pillow are needed: the demo CLI can make sample images without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LABELS = ("background", "circle", "square", "triangle")
BACKGROUND, CIRCLE, SQUARE, TRIANGLE = range(4)

# Seeds below this bound are training data; held-out scenes use seeds above it.
HELD_OUT_SEED_BASE = 10_000_000


@dataclass(frozen=True)
class Scene:
    image: Image.Image  # RGB
    mask: np.ndarray  # (H, W) uint8 class indices, occlusion applied
    seed: int


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A background that is not flat, so the model must learn shape, not contrast."""
    kind = rng.integers(0, 4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0 = rng.uniform(0, 255, 3)
    c1 = rng.uniform(0, 255, 3)
    if kind == 0:  # linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    elif kind == 1:  # stripes
        freq = rng.uniform(3, 12)
        angle = rng.uniform(0, math.pi)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    elif kind == 2:  # checkerboard
        n = rng.integers(3, 10)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    else:  # smooth blobs: upsampled noise
        small = rng.uniform(0, 1, (rng.integers(3, 8),) * 2).astype(np.float32)
        t = np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC))
        t = np.clip(t, 0, 1)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += rng.normal(0, rng.uniform(0, 18), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(kind: int, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    n = 4 if kind == SQUARE else 3
    # A square of "radius" r has its corners at r * sqrt(2); keep areas comparable.
    rr = r * (1.25 if kind == SQUARE else 1.45)
    return [
        (cx + rr * math.cos(rot + 2 * math.pi * k / n), cy + rr * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)
    ]


def make_scene(seed: int, size: int = 96, max_shapes: int = 4) -> Scene:
    rng = np.random.default_rng(seed)
    bg = _texture(rng, size)
    image = Image.fromarray(bg, "RGB")
    mask = Image.new("L", (size, size), BACKGROUND)
    draw_img = ImageDraw.Draw(image)
    draw_mask = ImageDraw.Draw(mask)
    bg_mean = bg.reshape(-1, 3).mean(0)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = int(rng.integers(1, len(LABELS)))
        r = rng.uniform(size * 0.08, size * 0.22)
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
        # A colour far enough from the background that the shape is visible at all.
        for _ in range(20):
            colour = rng.uniform(0, 255, 3)
            if np.abs(colour - bg_mean).sum() > 120:
                break
        fill = tuple(int(c) for c in colour)
        if kind == CIRCLE:
            box = [cx - r, cy - r, cx + r, cy + r]
            draw_img.ellipse(box, fill=fill)
            draw_mask.ellipse(box, fill=kind)
        else:
            pts = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
            draw_img.polygon(pts, fill=fill)
            draw_mask.polygon(pts, fill=kind)
    if rng.uniform() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    arr = np.asarray(image).astype(np.float32)
    arr += rng.normal(0, rng.uniform(0, 8), arr.shape)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return Scene(image=image, mask=np.asarray(mask, dtype=np.uint8).copy(), seed=seed)


def held_out(n: int, size: int = 96) -> list[Scene]:
    """Scenes never seen in training (their seeds lie above every training seed)."""
    return [make_scene(HELD_OUT_SEED_BASE + i, size=size) for i in range(n)]
