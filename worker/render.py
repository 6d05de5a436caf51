"""Turn a label map and a CAM into the three PNG artifacts.

The mask is a palette PNG whose pixel values are class indices (a client reads classes
straight from it; the palette only makes it viewable); the heatmap is 8-bit grayscale;
the overlay blends a jet-coloured heatmap onto the original for people to look at.
PNG compression is kept low: encode time is worker time taken from the GPU.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

_BASE_COLOURS = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (255, 215, 180), (0, 0, 128), (128, 128, 128),
]  # fmt: skip


def palette(n: int = 256) -> list[tuple[int, int, int]]:
    """Distinct colours for the first classes, then a deterministic spread for the rest."""
    cols = list(_BASE_COLOURS)
    rng = np.random.default_rng(0)
    while len(cols) < n:
        cols.append(tuple(int(v) for v in rng.integers(40, 256, 3)))
    return cols[:n]


_PALETTE = palette()
_PALETTE_BYTES = bytes(v for c in _PALETTE for v in c)


def hex_colour(class_id: int) -> str:
    r, g, b = _PALETTE[class_id]
    return f"#{r:02x}{g:02x}{b:02x}"


def _jet_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], 1) * 255).astype(np.uint8)


JET = _jet_lut()


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mask_png(labels: np.ndarray) -> bytes:
    img = Image.fromarray(labels.astype(np.uint8))
    img.putpalette(_PALETTE_BYTES)  # L becomes P with the values untouched
    return encode_png(img)


def heatmap_u8(cam: np.ndarray) -> np.ndarray:
    return np.round(np.clip(cam, 0.0, 1.0) * 255.0).astype(np.uint8)


def heatmap_png(heat: np.ndarray) -> bytes:
    return encode_png(Image.fromarray(heat))


def overlay_png(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> bytes:
    coloured = JET[heat].astype(np.uint16)
    blended = (coloured * int(alpha * 256) + rgb.astype(np.uint16) * (256 - int(alpha * 256))) >> 8
    return encode_png(Image.fromarray(blended.astype(np.uint8)))
