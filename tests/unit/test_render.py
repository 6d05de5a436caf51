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
    black = Image.new("RGB", (4, 3))
    ov = Image.open(io.BytesIO(render.overlay_image(black, heat, "image/png")))
    assert ov.mode == "RGB" and ov.size == (4, 3)
    px = np.asarray(ov)
    assert px[2, 3, 0] > px[2, 3, 2] and px[0, 0, 2] > px[0, 0, 0]  # hot is red, cold is blue


def test_the_overlay_is_the_floor_of_the_mean_of_jet_and_the_image_for_every_pair_of_values():
    heat = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)  # every heat value ...
    grey = np.tile(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)  # ... beside every pixel value
    rgb = np.stack([grey, 255 - grey, grey // 2], -1)
    got = np.asarray(render.overlay(Image.fromarray(rgb), heat), dtype=np.int32)
    assert np.array_equal(got, (render.JET[heat].astype(np.int32) + rgb) // 2)


def test_heatmap_u8_rounds_to_nearest_and_clips():
    cam = np.array([[-0.2, 0.0, 0.5 / 255, 1.5 / 255], [0.5, 0.999, 1.0, 3.0]], dtype=np.float32)
    assert render.heatmap_u8(cam).tolist() == [[0, 0, 0, 2], [128, 255, 255, 255]]
    assert cam[0, 0] == np.float32(-0.2)  # the caller's array is left as it was


def _photo(w: int = 96, h: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1).astype(np.uint8)


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_overlay_format_follows_the_upload_in_auto_and_is_fixed_otherwise():
    photo, drawing = _jpeg(_photo()), render.heatmap_png(_photo()[..., 0])
    auto = render.Overlay("auto")
    assert (auto.media_type(photo), auto.media_type(drawing)) == ("image/jpeg", "image/png")
    assert {render.Overlay("png").media_type(d) for d in (photo, drawing)} == {"image/png"}
    assert {render.Overlay("jpeg").media_type(d) for d in (photo, drawing)} == {"image/jpeg"}
    assert render.LOSSLESS.media_type(photo) == "image/png"  # the pipeline's default: exact results


def test_a_jpeg_overlay_is_the_same_picture_as_the_png_one_and_says_what_it_is():
    from shared.artifacts import media_type

    rgb = _photo()
    heat = render.heatmap_u8(np.linspace(0, 1, rgb.shape[0] * rgb.shape[1], dtype=np.float32).reshape(rgb.shape[:2]))
    png = render.overlay_image(Image.fromarray(rgb), heat, "image/png")
    jpg = render.overlay_image(Image.fromarray(rgb), heat, "image/jpeg", jpeg_quality=90)
    assert (media_type(png), media_type(jpg)) == ("image/png", "image/jpeg")
    exact = np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)
    lossy = Image.open(io.BytesIO(jpg))
    assert (lossy.format, lossy.mode, lossy.size) == ("JPEG", "RGB", (96, 64))
    assert np.array_equal(exact, (render.JET[heat].astype(np.int16) + rgb) // 2)
    assert np.abs(np.asarray(lossy, dtype=np.int16) - exact).mean() < 3  # quality 90: a close copy
    rougher = render.overlay_image(Image.fromarray(rgb), heat, "image/jpeg", jpeg_quality=10)
    assert len(rougher) < len(jpg)  # the quality setting reaches the encoder
