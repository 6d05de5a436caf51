"""A JPEG upload's overlay is a JPEG (SEGCAM_OVERLAY_FORMAT=auto); nothing else about the job changes.

The overlay is the one artifact made for people to look at; the mask and heatmap are data and
must be the same bytes whatever the overlay is encoded as.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.schemas import Method
from tests.explain.conftest import png
from training.shapes import held_out
from worker import render
from worker.pipeline import Item, Pipeline


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_auto_gives_a_jpeg_upload_a_jpeg_overlay_in_a_mixed_batch_and_keeps_the_rest_exact(demo_model):
    scenes = held_out(3)
    one, two, three = (s.image for s in scenes)
    items = [Item("a", jpeg(one), 1), Item("b", png(two), None), Item("c", jpeg(three))]
    lossless = Pipeline(demo_model, 1).run(items, Method.gradcam)
    auto = Pipeline(demo_model, 2, render.Overlay("auto", 90)).run(items, Method.gradcam)
    assert [r.media_types["overlay"] for r in auto] == ["image/jpeg", "image/png", "image/jpeg"]
    assert [r.media_types["overlay"] for r in lossless] == ["image/png"] * 3
    for a, b in zip(lossless, auto, strict=True):
        assert a.media_types["mask"] == b.media_types["mask"] == "image/png" == b.media_types["heatmap"]
        assert (a.artifacts["mask"], a.artifacts["heatmap"]) == (b.artifacts["mask"], b.artifacts["heatmap"])
        assert a.classes == b.classes and a.explanation == b.explanation
        exact = np.asarray(Image.open(io.BytesIO(a.artifacts["overlay"])), dtype=np.int16)
        shown = Image.open(io.BytesIO(b.artifacts["overlay"]))
        assert shown.size == (a.width, a.height) and shown.format == b.media_types["overlay"].split("/")[1].upper()
        assert np.abs(np.asarray(shown, dtype=np.int16) - exact).mean() < 12  # noisy scenes: JPEG at 90
    assert auto[1].artifacts["overlay"] == lossless[1].artifacts["overlay"]  # the PNG upload's: unchanged


def test_png_keeps_every_overlay_lossless_and_one_computed_image_keeps_its_type(demo_model):
    scene = held_out(1)[0]
    items = [Item("a", png(scene.image)), Item("b", jpeg(scene.image))]
    pipe = Pipeline(demo_model, 1, render.Overlay("png"))
    assert [r.media_types["overlay"] for r in pipe.run(items, Method.gradcam)] == ["image/png"] * 2
    auto = Pipeline(demo_model, 1, render.Overlay("auto"))
    computed = auto.compute(items, Method.gradcam)
    (second,) = auto.finish(computed.one(1))  # a batch finished one by one (the runner's fallback)
    assert second.media_types["overlay"] == "image/jpeg"
