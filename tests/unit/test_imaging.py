from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from shared.imaging import ImageRejected, decode_rgb, inspect
from shared.settings import Settings

CAPS = dict(max_pixels=1_000_000, max_side=4096, allowed_formats=("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_sniffs_the_bytes_not_the_name():
    info = inspect(encode(Image.new("RGB", (30, 20)), "JPEG"), **CAPS)
    assert (info.format, info.width, info.height) == ("JPEG", 30, 20)


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_image"),
        (b"hello, I am text", 415, "not_an_image"),
        (b"<html><body>hi</body></html>", 415, "not_an_image"),
        (b"PK\x03\x04" + b"\x00" * 100, 415, "not_an_image"),
    ],
)
def test_non_images_are_rejected_with_a_code(data, status, code):
    with pytest.raises(ImageRejected) as e:
        inspect(data, **CAPS)
    assert (e.value.status, e.value.code) == (status, code)


def test_truncated_png_is_rejected_as_corrupt():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(ImageRejected) as e:
        inspect(data[: len(data) // 2], **CAPS)
    assert e.value.code == "corrupt_image" and e.value.status == 422


def test_pixel_cap_is_checked_from_the_header_before_decoding():
    data = encode(Image.new("L", (2000, 1000)), "PNG")  # 2 MP > 1 MP cap
    with pytest.raises(ImageRejected) as e:
        inspect(data, **CAPS)
    assert e.value.status == 413 and e.value.code == "image_too_large"
    assert "2000x1000" in e.value.message and f"{CAPS['max_pixels']} pixels" in e.value.message


def test_a_decompression_bomb_names_the_limit_too():
    data = encode(Image.new("1", (20_000, 20_000)), "PNG")  # over Pillow's own guard: refused before our check
    with pytest.raises(ImageRejected) as e:
        inspect(data, **{**CAPS, "max_side": 50_000, "max_pixels": 89_478_485})
    assert e.value.status == 413 and e.value.code == "image_too_large"
    assert "89478485 pixels" in e.value.message


def test_a_pixel_cap_above_pillows_guard_is_refused_at_start_up():
    guard = Image.MAX_IMAGE_PIXELS  # Settings' bound, should a Pillow upgrade move it
    assert Settings(max_pixels=guard).max_pixels == guard
    with pytest.raises(ValidationError, match="max_pixels"):
        Settings(max_pixels=guard + 1)


def test_disallowed_format_is_refused():
    data = encode(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(ImageRejected) as e:
        inspect(data, **{**CAPS, "allowed_formats": ("JPEG",)})
    assert e.value.code == "unsupported_format"


def test_exif_rotation_swaps_reported_size_and_is_applied_on_decode():
    img = Image.new("RGB", (40, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = encode(img, "JPEG", exif=exif)
    info = inspect(data, **CAPS)
    assert (info.width, info.height) == (10, 40)
    assert decode_rgb(data).size == (10, 40)


def test_sixteen_bit_and_alpha_images_decode_to_8bit_rgb():
    arr16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    rgb = decode_rgb(encode(Image.fromarray(arr16), "PNG"))
    assert rgb.mode == "RGB" and np.asarray(rgb).max() > 200  # scaled, not clipped to 255 everywhere
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert decode_rgb(encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
