"""``SEGCAM_BF16_BACKBONE``: autocast before the CAM's target layer only. The layers after
it, the backward pass and the CAM must stay fp32, and the results close to the fp32 ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.model_store import ModelStore
from shared.schemas import Method
from tests.conftest import ROOT
from tests.explain.conftest import png
from training.shapes import held_out
from worker.archs.registry import find_layer
from worker.loader import load_model
from worker.pipeline import Item, Pipeline


@pytest.fixture(scope="module")
def bf16_model():
    store = ModelStore(ROOT / "models" / "store")
    return load_model(store, store.resolve("shapes"), torch.device("cpu"), bf16_backbone=True)


def test_only_the_layers_before_the_target_layer_run_in_bf16(bf16_model):
    seen = {}
    net = bf16_model.module
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    last_conv = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # after dec1: the classifier
    hooks = [
        first_conv.register_forward_hook(lambda m, a, o: seen.__setitem__("first", o.dtype)),
        last_conv.register_forward_hook(lambda m, a, o: seen.__setitem__("last", o.dtype)),
        find_layer(net, "dec1").register_forward_hook(lambda m, a, o: seen.__setitem__("target_in_cam", o.dtype)),
    ]
    try:
        out = Pipeline(bf16_model).run([Item("a", png(held_out(1)[0].image))], Method.gradcam)[0]
    finally:
        for h in hooks:
            h.remove()
    assert bf16_model.backbone_dtype is torch.bfloat16
    assert seen["first"] is torch.bfloat16  # the backbone ran under autocast
    assert seen["last"] is torch.float32 and seen["target_in_cam"] is torch.float32  # the CAM's part did not
    assert out.cam.dtype == np.float32 and not torch.is_autocast_enabled("cpu")  # and autocast is off again


def test_results_stay_close_to_fp32(demo_model, bf16_model):
    scenes = held_out(12)
    items = [Item(str(i), png(s.image)) for i, s in enumerate(scenes)]
    exact = Pipeline(demo_model).run(items, Method.gradcam)
    fast = Pipeline(bf16_model).run(items, Method.gradcam)
    for a, b in zip(exact, fast, strict=True):
        assert np.mean(a.labels == b.labels) >= 0.999
        assert a.explanation.class_id == b.explanation.class_id
        assert np.abs(a.cam - b.cam).max() <= 0.05  # measured 0.007 on the demo model
