"""Real loading code for torchvision architectures, tested with weights saved from locally
built models (nothing can be downloaded here), plus the checks that guard loading."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.model_store import ModelStore
from shared.schemas import Method
from worker.archs.registry import ARCHS, build
from worker.loader import ModelCache, ModelLoadError, load_model
from worker.pipeline import Item, Pipeline

VOC = ["background", "aeroplane", "bicycle", "bird", "boat"]


def write_version(root: Path, name: str, arch: str, state: dict, labels=VOC, size=(64, 64), **extra) -> Path:
    d = root / name / "1"
    d.mkdir(parents=True)
    torch.save(state, d / "weights.pt")
    manifest = {
        "name": name,
        "version": "1",
        "architecture": arch,
        "labels": labels,
        "input_size": list(size),
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "sha256": hashlib.sha256((d / "weights.pt").read_bytes()).hexdigest(),
        **extra,
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def image_bytes(w=80, h=60) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "shapes_unet"])
def test_torchvision_architecture_loads_from_a_local_state_dict_and_explains(tmp_path, arch):
    torch.manual_seed(0)
    net, layer_path = build(arch, len(VOC))
    write_version(tmp_path, "tv", arch, net.net.state_dict() if hasattr(net, "net") else net.state_dict())
    store = ModelStore(tmp_path)
    loaded = load_model(store, store.resolve("tv"), torch.device("cpu"))
    assert loaded.target_layer_name == ARCHS[arch].target_layer == layer_path
    assert loaded.target_layer is loaded.module.net.get_submodule(layer_path)
    out = loaded.module(torch.zeros(1, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, len(VOC), 64, 64)  # logits, not a dict
    r = Pipeline(loaded).run([Item("x", image_bytes(), None)], Method.gradcam)[0]
    assert (r.width, r.height) == (80, 60) and r.labels.shape == (60, 80)
    assert r.labels.max() < len(VOC)
    assert set(r.artifacts) == {"mask", "heatmap", "overlay"}


def test_pretrained_style_weights_with_an_aux_head_load_and_the_head_is_dropped(tmp_path):
    net = build("fcn_resnet50", len(VOC))[0].net
    from torchvision.models.segmentation import fcn_resnet50

    with_aux = fcn_resnet50(weights=None, weights_backbone=None, num_classes=len(VOC), aux_loss=True)
    assert any(k.startswith("aux_classifier.") for k in with_aux.state_dict())
    write_version(tmp_path, "fcn", "fcn_resnet50", with_aux.state_dict())
    store = ModelStore(tmp_path)
    loaded = load_model(store, store.resolve("fcn"), torch.device("cpu"))
    assert loaded.module.net.aux_classifier is None
    assert net is not None


def test_weights_that_do_not_match_the_manifest_sha256_are_refused(tmp_path):
    net, _ = build("shapes_unet", 4, width=4)
    d = write_version(
        tmp_path, "m", "shapes_unet", net.state_dict(), labels=["a", "b", "c", "d"], arch_kwargs={"width": 4}
    )
    state = net.state_dict()
    state["head.bias"] = state["head.bias"] + 1
    torch.save(state, d / "weights.pt")  # swapped after the manifest was written
    store = ModelStore(tmp_path)
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(store, store.resolve("m"), torch.device("cpu"))


def test_a_pickle_with_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (Path("/tmp/segcam-pwned").touch, ())

    net, _ = build("shapes_unet", 4, width=4)
    d = write_version(
        tmp_path, "m", "shapes_unet", net.state_dict(), labels=["a", "b", "c", "d"], arch_kwargs={"width": 4}
    )
    torch.save({"x": Evil()}, d / "weights.pt", _use_new_zipfile_serialization=True)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256((d / "weights.pt").read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(manifest))
    store = ModelStore(tmp_path)
    Path("/tmp/segcam-pwned").unlink(missing_ok=True)
    with pytest.raises(Exception):  # noqa: B017  (torch's UnpicklingError)
        load_model(store, store.resolve("m"), torch.device("cpu"))
    assert not Path("/tmp/segcam-pwned").exists()


def test_model_cache_is_a_bounded_lru(tmp_path):
    for n in ("a", "b", "c"):
        net, _ = build("shapes_unet", 4, width=4)
        write_version(
            tmp_path, n, "shapes_unet", net.state_dict(), labels=["w", "x", "y", "z"], arch_kwargs={"width": 4}
        )
    store = ModelStore(tmp_path)
    cache = ModelCache(store, torch.device("cpu"), capacity=2)
    first = cache.get(store.resolve("a"))
    cache.get(store.resolve("b"))
    assert cache.get(store.resolve("a")) is first  # hit, and now most recent
    cache.get(store.resolve("c"))  # evicts b
    assert cache.loaded() == ["a:1", "c:1"]
