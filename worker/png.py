"""A PNG writer for the worker's artifacts: the same pixels as Pillow's, in half the time.

Pillow's encoder picks a filter per row by trying all five, the libpng heuristic. That search,
not the compression, was most of an artifact's encode time: a 12-megapixel heatmap took 123 ms
at ``compress_level=1`` and 77 ms with no compression at all. The artifacts are smooth (a
bilinear heatmap, flat label regions, an overlay whose upper half is a smooth colour ramp), so
one fixed filter does as well: every row is filtered "Up" (its difference from the row above,
one numpy subtraction) and deflated with ``Z_RLE``, which is made for runs of small
differences. At 12 megapixels the heatmap encodes in about half the time (its file about 8%
larger) and the PNG overlay's encode in under half (its file smaller, and the mask's a third
the size): ``python -m benchmarks.png_encode``.

Rows are filtered and deflated in slabs, so the filtered copy never holds more than a slab.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
UP = 2  # PNG filter type 2: each byte minus the byte above it (the first row: minus zero)
SLAB_BYTES = 1 << 20
LEVEL = 1  # encode time is worker time taken from the device; more buys little on these images
_COLOUR_TYPE = {1: 0, 3: 2}  # channels -> PNG colour type (grayscale, truecolour); palette is 3


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def encode(pixels: np.ndarray, palette: bytes | None = None) -> bytes:
    """``pixels``: uint8, (H, W) for grayscale or palette indices, (H, W, 3) for RGB.
    ``palette``: RGB triplets; the image is then a palette PNG whose values are the indices."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or 0 in pixels.shape:
        raise ValueError(f"expected a non-empty uint8 (H, W) or (H, W, 3) array, got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels not in _COLOUR_TYPE or (palette is not None and channels != 1):
        raise ValueError(f"{channels} channels{' with a palette' if palette is not None else ''} is not supported")
    rows = np.ascontiguousarray(pixels).reshape(h, w * channels)
    colour_type = 3 if palette is not None else _COLOUR_TYPE[channels]
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
    if palette is not None:
        header += _chunk(b"PLTE", palette)
    z = zlib.compressobj(LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    parts, above = [], np.zeros(rows.shape[1], np.uint8)
    step = max(1, SLAB_BYTES // rows.shape[1])
    for y in range(0, h, step):
        slab = rows[y : y + step]
        out = np.empty((len(slab), rows.shape[1] + 1), np.uint8)
        out[:, 0] = UP
        np.subtract(slab[0], above, out=out[0, 1:])
        np.subtract(slab[1:], slab[:-1], out=out[1:, 1:])
        parts.append(z.compress(out))
        above = slab[-1]
    parts.append(z.flush())
    return SIGNATURE + header + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
