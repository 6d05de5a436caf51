"""benchmarks.overlay_format measures what it says: JPEG uploads of the asked size, and the
numpy blend it times as "before" is the one whose pixels the Pillow blend must equal."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from benchmarks.overlay_format import blend_times, numpy_blend, photo
from worker import render


def test_uploads_are_jpegs_of_the_size_asked_with_a_photos_spread_of_values():
    im = Image.open(io.BytesIO(photo(320, 240, seed=3)))
    assert (im.format, im.size, im.mode) == ("JPEG", (320, 240), "RGB")
    assert np.asarray(im).std() > 20  # not a flat image, which any encoder shrinks to nothing


def test_the_old_blend_and_render_overlay_give_the_same_pixels_and_both_are_timed():
    image = Image.open(io.BytesIO(photo(64, 48))).convert("RGB")
    heat = np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    assert np.array_equal(np.asarray(numpy_blend(image, heat)), np.asarray(render.overlay(image, heat)))
    times = blend_times(photo(64, 48), rounds=1)
    assert set(times) == {"numpy (before)", "Pillow (now)"} and all(v >= 0 for v in times.values())
