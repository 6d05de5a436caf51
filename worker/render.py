"""Turn a label map and a CAM into the three artifacts.

The mask is a palette PNG whose pixel values are class indices (a client reads classes
straight from it; the palette only makes it viewable); the heatmap is 8-bit grayscale;
the overlay blends a jet-coloured heatmap onto the original for people to look at.
PNGs are written by ``worker/png.py``, which spends less of the worker's time on them than
Pillow's encoder: encode time is worker time taken from the GPU.

The overlay of a photo is the exception to PNG: a lossless overlay of a 12-megapixel JPEG
was 13 MB and most of its job, where a JPEG is 1.9 MB and the job 2.6x faster (``python -m
benchmarks.overlay_format``). It is a picture for people, so by default it follows its
upload: a JPEG for a JPEG, a PNG otherwise. The mask and heatmap are data and stay lossless.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from shared.artifacts import JPEG, PNG, is_jpeg
from worker import png

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


@dataclass(frozen=True)
class Overlay:
    """How overlays are encoded (``SEGCAM_OVERLAY_FORMAT``, ``SEGCAM_OVERLAY_JPEG_QUALITY``).
    ``auto``: a JPEG for a JPEG upload (already lossy: a lossless overlay only keeps its
    artefacts at eight times the size), a PNG for anything else."""

    format: str = "png"
    jpeg_quality: int = 90

    def media_type(self, upload: bytes) -> str:
        if self.format == "auto":
            return JPEG if is_jpeg(upload) else PNG
        return JPEG if self.format == "jpeg" else PNG


LOSSLESS = Overlay()


def mask_png(labels: np.ndarray) -> bytes:
    return png.encode(labels.astype(np.uint8, copy=False), palette=_PALETTE_BYTES)


def heatmap_u8(cam: np.ndarray) -> np.ndarray:
    """0..1 to 0..255, rounded; in place on one float copy (half the time at 12 megapixels)."""
    x = np.clip(cam, 0.0, 1.0, dtype=np.float32)
    x *= 255.0
    return np.rint(x, out=x).astype(np.uint8)


def heatmap_png(heat: np.ndarray) -> bytes:
    return png.encode(heat)


_JET_PALETTE = JET.tobytes()


def overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """The jet-coloured heatmap blended half and half onto the image: floor((jet + rgb) / 2).
    Colouring by palette and Pillow's blend, in C: about 4x faster than the same arithmetic in
    numpy at 12 megapixels (``python -m benchmarks.overlay_format``: 82 against 314 ms)."""
    coloured = Image.fromarray(heat)
    coloured.putpalette(_JET_PALETTE)
    return Image.blend(coloured.convert("RGB"), image, 0.5)


def overlay_image(image: Image.Image, heat: np.ndarray, media: str, jpeg_quality: int = 90) -> bytes:
    """The overlay as ``media`` (``PNG`` or ``JPEG``)."""
    blended = overlay(image, heat)
    if media == PNG:
        return png.encode(np.asarray(blended))
    buf = io.BytesIO()
    blended.save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue()
