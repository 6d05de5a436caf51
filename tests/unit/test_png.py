"""worker/png.py writes PNGs that decoders read back as the very pixels given, and whose
structure is the format's: every chunk's CRC, the header's fields, one filter byte per row."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from worker import png, render

RNG = np.random.default_rng(7)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == png.SIGNATURE
    out, at = [], 8
    while at < len(data):
        (n,) = struct.unpack(">I", data[at : at + 4])
        tag, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + n]
        (crc,) = struct.unpack(">I", data[at + 8 + n : at + 12 + n])
        assert crc == zlib.crc32(tag + body), tag
        out.append((tag, body))
        at += 12 + n
    return out


def _unfilter_up(raw: bytes, h: int, row: int) -> np.ndarray:
    """PNG's "Up" filter undone by hand: a decoder independent of Pillow's."""
    lines = np.frombuffer(raw, np.uint8).reshape(h, row + 1)
    assert (lines[:, 0] == png.UP).all()
    return np.cumsum(lines[:, 1:], axis=0, dtype=np.uint64).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (48, 64), (37, 53, 3), (1, 1, 3), (300, 200, 3)])
def test_pillow_reads_back_the_pixels_given(shape):
    pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
    img = Image.open(io.BytesIO(png.encode(pixels)))
    assert img.format == "PNG" and img.mode == ("L" if len(shape) == 2 else "RGB")
    assert np.array_equal(np.asarray(img), pixels)


def test_the_structure_is_the_formats_and_an_independent_unfiltering_gives_the_pixels(monkeypatch):
    monkeypatch.setattr(png, "SLAB_BYTES", 100)  # many slabs: each one's first row refers to the last
    pixels = RNG.integers(0, 256, (45, 31, 3), dtype=np.uint8)
    chunks = _chunks(png.encode(pixels))
    assert [t for t, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (31, 45, 8, 2, 0, 0, 0)
    assert np.array_equal(_unfilter_up(zlib.decompress(chunks[1][1]), 45, 31 * 3).reshape(45, 31, 3), pixels)


def test_slab_size_does_not_change_the_pixels(monkeypatch):
    pixels = RNG.integers(0, 256, (64, 40), dtype=np.uint8)
    whole = png.encode(pixels)
    monkeypatch.setattr(png, "SLAB_BYTES", 41 * 3)  # three rows a slab, the last slab shorter
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.encode(pixels)))), pixels)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(whole))), pixels)


def test_a_palette_png_keeps_the_indices_and_the_palette():
    labels = RNG.integers(0, 21, (30, 50), dtype=np.uint8)
    data = png.encode(labels, palette=render._PALETTE_BYTES)
    assert [t for t, _ in _chunks(data)] == [b"IHDR", b"PLTE", b"IDAT", b"IEND"]
    img = Image.open(io.BytesIO(data))
    assert img.mode == "P" and np.array_equal(np.asarray(img), labels)
    assert bytes(img.getpalette()) == render._PALETTE_BYTES


def test_a_strided_view_is_written_as_its_pixels():
    base = RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    view = base[::2, 5:45]  # not contiguous
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.encode(view)))), view)


@pytest.mark.parametrize(
    "pixels, palette",
    [
        (np.zeros((4, 4), np.float32), None),
        (np.zeros((4, 4, 4), np.uint8), None),  # RGBA: no artifact is one
        (np.zeros((4, 4, 3), np.uint8), render._PALETTE_BYTES),
        (np.zeros((0, 4), np.uint8), None),
        (np.zeros(4, np.uint8), None),
    ],
)
def test_what_it_does_not_write_is_refused_by_name(pixels, palette):
    with pytest.raises(ValueError):
        png.encode(pixels, palette)


def test_smooth_artifacts_come_out_about_the_size_pillows_adaptive_filtering_makes_them():
    """The fixed filter's premise: on a bilinear heatmap and flat label regions, one filter does
    about as well as Pillow's per-row search over all five (no filter at all: 1.5x the size)."""
    h, w = 300, 400
    y, x = np.mgrid[0:h, 0:w]
    heat = ((np.sin(x / 37.0) * np.cos(y / 23.0) + 1) * 127.5).astype(np.uint8)
    labels = ((x // 90 + y // 70) % 5).astype(np.uint8)
    for pixels, at_most in ((heat, 1.1), (labels, 1.0)):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
        assert len(png.encode(pixels)) <= at_most * len(buf.getvalue())
