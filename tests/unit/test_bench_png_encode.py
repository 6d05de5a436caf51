"""benchmarks.png_encode compares what it says: its "before" is Pillow's writer with the same
pixels as the render functions now, and swapping the writers for whole jobs is undone after."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from benchmarks import png_encode
from worker import render


def _idat_filters(data: bytes) -> set[int]:
    """The filter bytes a PNG's rows use (1-channel, 8-bit): Pillow picks per row, segcam's is Up."""
    at, idat, (w, h) = 8, b"", Image.open(io.BytesIO(data)).size
    while at < len(data):
        (n,) = struct.unpack(">I", data[at : at + 4])
        if data[at + 4 : at + 8] == b"IDAT":
            idat += data[at + 8 : at + 8 + n]
        at += 12 + n
    return set(np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w + 1)[:, 0].tolist())


def test_before_and_now_write_the_same_pixels_with_different_writers():
    labels, heat = png_encode.artifacts_for(96, 64)["mask"][0], png_encode.artifacts_for(96, 64)["heatmap"][0]
    for name, arg in (("mask_png", labels), ("heatmap_png", heat)):
        before, now = png_encode.BEFORE[name](arg), png_encode.NOW[name](arg)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(before))), np.asarray(Image.open(io.BytesIO(now))))
        assert before != now
    assert _idat_filters(png_encode.NOW["heatmap_png"](heat)) == {2}
    assert _idat_filters(png_encode.BEFORE["heatmap_png"](heat)) != {2}  # Pillow's search: not one fixed filter


def test_writers_swaps_the_render_functions_and_puts_them_back():
    now = render.heatmap_png
    with png_encode.writers(png_encode.BEFORE):
        assert render.heatmap_png is png_encode.BEFORE["heatmap_png"]
    assert render.heatmap_png is now


def test_artifact_times_measures_both_writers_for_each_artifact():
    got = png_encode.artifact_times(64, 48, rounds=1)
    assert set(got) == {"mask", "heatmap", "overlay"}
    assert all(set(v) == {"pillow", "segcam"} and v["segcam"]["kb"] > 0 for v in got.values())
