from __future__ import annotations

import io

import numpy as np
from PIL import Image

from worker import render


def test_mask_png_is_a_palette_image_whose_values_are_class_indices():
    labels = np.array([[0, 1, 2], [3, 20, 0]], dtype=np.uint8)
    img = Image.open(io.BytesIO(render.mask_png(labels)))
    assert img.mode == "P"
    assert np.array_equal(np.asarray(img), labels)
    assert img.getpalette()[3:6] != [0, 0, 0]  # class 1 is visible


def test_heatmap_is_8bit_gray_and_overlay_rgb():
    cam = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    heat = render.heatmap_u8(cam)
    gray = Image.open(io.BytesIO(render.heatmap_png(heat)))
    assert gray.mode == "L" and np.asarray(gray)[0, 0] == 0 and np.asarray(gray)[2, 3] == 255
    ov = Image.open(io.BytesIO(render.overlay_png(np.zeros((3, 4, 3), np.uint8), heat)))
    assert ov.mode == "RGB" and ov.size == (4, 3)
    px = np.asarray(ov)
    assert px[2, 3, 0] > px[2, 3, 2] and px[0, 0, 2] > px[0, 0, 0]  # hot is red, cold is blue
