"""A corpus of hostile and odd uploads, each with the outcome segcam promises for it.

Built in code (deterministic, no binary files to trust): ``CASES`` maps a name to the
request to send and the expected answer. ``expect`` is an HTTP status with an error code,
or 202 with ``"succeeded"`` for inputs that must be accepted and processed.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from training.shapes import make_scene


@dataclass
class Case:
    files: dict | None
    data: dict = field(default_factory=dict)
    status: int = 202
    code: str | None = None  # error code for 4xx; None for accepted jobs
    size: tuple[int, int] | None = None  # expected result size for accepted jobs
    raw: bytes | None = None  # send this body verbatim instead of a multipart form
    content_type: str | None = None


def _scene(size=(64, 48)) -> Image.Image:
    return make_scene(50_000_000, size=96).image.resize(size)


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def bomb_png(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG of side x side zeros: a few hundred KB that would decode to gigapixels."""
    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    return _enc(_scene((80, 40)), "JPEG", exif=exif)


def _animated_gif() -> bytes:
    frames = [_scene((50, 40)).convert("P"), Image.new("P", (50, 40), 3)]
    return _enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _multipage_tiff() -> bytes:
    return _enc(_scene((60, 40)), "TIFF", save_all=True, append_images=[Image.new("RGB", (60, 40), "red")])


def _palette_transparent() -> bytes:
    img = _scene((48, 48)).convert("P", palette=Image.ADAPTIVE, colors=16)
    return _enc(img, "PNG", transparency=0)


def _png16() -> bytes:
    arr = (np.asarray(_scene((40, 30)).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return _enc(Image.fromarray(arr), "PNG")


def _big_pixels() -> bytes:
    return _enc(Image.new("1", (7000, 6000)), "PNG")  # 42 Mpx, a few KB


PNG = _enc(_scene(), "PNG")
FORM_IMAGE_PART = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + PNG
JPEG = _enc(_scene(), "JPEG")

CASES: dict[str, Case] = {
    # refused: not an image, or not a usable one
    "empty_body": Case(
        None, raw=b"", content_type="multipart/form-data; boundary=x", status=422, code="invalid_request"
    ),
    "zero_byte_file": Case({"image": ("a.png", b"")}, status=400, code="empty_image"),
    "truncated_form": Case(  # cut inside its last field: never a job with that field silently dropped
        None,
        raw=FORM_IMAGE_PART + b'\r\n--x\r\nContent-Disposition: form-data; name="target_class"\r\n\r\nsq',
        content_type="multipart/form-data; boundary=x",
        status=400,
        code="truncated_form",
    ),
    "text_file": Case({"image": ("a.png", b"hello world\n" * 10)}, status=415, code="not_an_image"),
    "html_file": Case(
        {"image": ("a.png", b"<!doctype html><html><body>x</body></html>")}, status=415, code="not_an_image"
    ),
    "zip_named_png": Case(
        {"image": ("photo.png", b"PK\x03\x04\x14\x00" + bytes(200))}, status=415, code="not_an_image"
    ),
    "pdf_file": Case({"image": ("a.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")}, status=415, code="not_an_image"),
    "svg_file": Case(
        {"image": ("a.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')},
        status=415,
        code="not_an_image",
    ),
    "truncated_png": Case({"image": ("a.png", PNG[: len(PNG) // 2])}, status=422, code="corrupt_image"),
    "truncated_jpeg": Case({"image": ("a.jpg", JPEG[: len(JPEG) // 2])}, status=422, code="corrupt_image"),
    "decompression_bomb": Case({"image": ("bomb.png", bomb_png())}, status=413, code="image_too_large"),
    "beyond_pixel_cap": Case({"image": ("big.png", _big_pixels())}, status=413, code="image_too_large"),
    # refused: bad fields
    "unknown_model": Case({"image": ("a.png", PNG)}, {"model": "resnet-9000"}, status=422, code="unknown_model"),
    "model_path_traversal": Case(
        {"image": ("a.png", PNG)}, {"model": "../../etc/passwd"}, status=422, code="unknown_model"
    ),
    "unknown_class_name": Case(
        {"image": ("a.png", PNG)}, {"target_class": "hexagon"}, status=422, code="unknown_class"
    ),
    "class_index_out_of_range": Case(
        {"image": ("a.png", PNG)}, {"target_class": "4"}, status=422, code="unknown_class"
    ),
    "negative_class_index": Case({"image": ("a.png", PNG)}, {"target_class": "-1"}, status=422, code="unknown_class"),
    "unknown_method": Case({"image": ("a.png", PNG)}, {"method": "scorecam"}, status=422, code="unknown_method"),
    "extra_unknown_fields": Case({"image": ("a.png", PNG)}, {"colour": "blue"}, status=422, code="unknown_field"),
    "very_long_field": Case({"image": ("a.png", PNG)}, {"method": "g" * 100_000}, status=422, code="field_too_long"),
    "non_utf8_field": Case(
        {"image": ("a.png", PNG)},
        {"model": "\udcff\udcfe".encode("utf-8", "surrogateescape")},
        status=422,
        code="unknown_model",
    ),
    # accepted and processed
    "one_by_one_pixel": Case({"image": ("a.png", _enc(Image.new("RGB", (1, 1), "red"), "PNG"))}, size=(1, 1)),
    "grayscale": Case({"image": ("a.png", _enc(_scene().convert("L"), "PNG"))}, size=(64, 48)),
    "one_bit": Case({"image": ("a.png", _enc(_scene().convert("1"), "PNG"))}, size=(64, 48)),
    "png_16_bit": Case({"image": ("a.png", _png16())}, size=(40, 30)),
    "palette_with_transparency": Case({"image": ("a.png", _palette_transparent())}, size=(48, 48)),
    "rgba": Case({"image": ("a.png", _enc(_scene().convert("RGBA"), "PNG"))}, size=(64, 48)),
    "cmyk_jpeg": Case({"image": ("a.jpg", _enc(_scene().convert("CMYK"), "JPEG"))}, size=(64, 48)),
    "exif_rotated_jpeg": Case({"image": ("a.jpg", _exif_rotated_jpeg())}, size=(40, 80)),
    "animated_gif": Case({"image": ("a.gif", _animated_gif())}, size=(50, 40)),
    "multipage_tiff": Case({"image": ("a.tif", _multipage_tiff())}, size=(60, 40)),
    "webp": Case({"image": ("a.webp", _enc(_scene(), "WEBP"))}, size=(64, 48)),
    "bmp": Case({"image": ("a.bmp", _enc(_scene(), "BMP"))}, size=(64, 48)),
    "jpeg_named_gif": Case({"image": ("photo.gif", JPEG, "image/gif")}, size=(64, 48)),
    "class_by_label": Case(
        {"image": ("a.png", PNG)}, {"target_class": "triangle", "method": "layercam"}, size=(64, 48)
    ),
}
