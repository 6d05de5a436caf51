"""The model store's write side: import (state_dict, TorchScript, demo arch, pretrained bake),
immutability, aliases, deletion rules, traffic tables, and the `segcam models` CLI."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from shared.model_store import ModelManifest, ModelStore, Normalization, StoreError, sha256_file
from shared.schemas import Method
from tests.conftest import ROOT
from training.shapes import held_out
from worker.archs.registry import build
from worker.archs.shapes_unet import ShapesUNet
from worker.loader import load_model
from worker.model_import import import_model
from worker.pipeline import Item, Pipeline
from worker.pretrained import bake

DEMO = ROOT / "models" / "store" / "shapes" / "1"
LABELS = ["background", "circle", "square", "triangle"]


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def demo_import(store: ModelStore, **kw):
    kw.setdefault("labels", LABELS)
    return import_model(store, DEMO / "weights.pt", name="shapes", architecture="shapes_unet",
                        arch_kwargs={"width": 16}, target_layer="dec1", **kw)  # fmt: skip


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_import_writes_a_complete_manifest_and_moves_latest(store):
    m1 = demo_import(store, metadata={"miou": "0.96", "dataset": "shapes"})
    assert (m1.name, m1.version, m1.architecture, m1.format) == ("shapes", "1", "shapes_unet", "state_dict")
    assert m1.labels == LABELS and m1.input_size == (96, 96) and m1.target_layer == "dec1"
    assert m1.normalization.mean == (0.5, 0.5, 0.5) and m1.created_at is not None
    assert m1.sha256 == json.loads((DEMO / "manifest.json").read_text())["sha256"]
    assert m1.metadata == {"miou": "0.96", "dataset": "shapes"}
    m2 = demo_import(store)
    assert m2.version == "2" and store.aliases("shapes") == {"latest": "2"}
    assert store.resolve("shapes").version == "2" and store.resolve("shapes:1").version == "1"


def test_versions_are_immutable(store, monkeypatch):
    demo_import(store, version="7")
    import worker.model_import as mi

    monkeypatch.setattr(mi, "check_runs", lambda *a: pytest.fail("the weights were run for an existing version"))
    with pytest.raises(StoreError, match="immutable"):
        demo_import(store, version="7")
    with pytest.raises(StoreError, match="invalid model name"):
        import_model(store, DEMO / "weights.pt", name="Bad Name", architecture="shapes_unet", labels=LABELS)


def test_a_normalisation_or_input_size_no_job_could_use_is_refused():
    assert Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).std == (0.25, 0.25, 0.25)
    for bad in [(0.0, 1.0, 1.0), (1.0, -1.0, 1.0), (1.0, 1.0, float("nan"))]:
        with pytest.raises(ValidationError, match="std"):
            Normalization(mean=(0.5, 0.5, 0.5), std=bad)  # every pixel is divided by it
    manifest = json.loads((DEMO / "manifest.json").read_text())
    ModelManifest.model_validate(manifest)
    with pytest.raises(ValidationError, match="input_size"):
        ModelManifest.model_validate({**manifest, "input_size": [0, 96]})


REFUSALS = """
import contextlib, io, json, sys
from client.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out.append([main(argv), err.getvalue()])
print(json.dumps({"results": out, "torch": "torch" in sys.modules}))
"""


def test_the_cli_refuses_an_import_it_cannot_write_before_loading_torch(tmp_path):
    """Verifying weights loads torch and runs the model (seconds): a mistyped name, an existing
    version or a missing file must not wait for it."""
    store = tmp_path / "store"
    shutil.copytree(DEMO, store / "demo" / "1")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    base = ["models", "--store", str(store), "import"]
    ok = [str(DEMO / "weights.pt"), "--arch", "shapes_unet", "--labels", str(labels)]
    cases = {
        "already exists": [*ok, "--name", "demo", "--version", "1"],
        "invalid model name 'Demo Model'": [*ok, "--name", "Demo Model"],
        "invalid version 'a/b'": [*ok, "--name", "demo", "--version", "a/b"],
        "nope.pt: no such file": [str(tmp_path / "nope.pt"), *ok[1:], "--name", "demo"],
        "nolabels.txt": [*ok[:-1], str(tmp_path / "nolabels.txt"), "--name", "demo"],
        "--meta takes KEY=VALUE, got 'trained_by'": [*ok, "--name", "demo", "--meta", "trained_by"],
    }
    argvs = [base + argv for argv in cases.values()]
    out = subprocess.run([sys.executable, "-c", REFUSALS, json.dumps(argvs)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.splitlines()[-1])
    for expected, (rc, stderr) in zip(cases, report["results"], strict=True):
        assert rc == 2 and expected in stderr, (expected, stderr)
    assert report["torch"] is False
    assert sorted(p.name for p in (store / "demo").iterdir()) == ["1"]  # nothing written


def test_weights_that_do_not_fit_the_architecture_are_refused_at_import(store):
    with pytest.raises(StoreError, match="do not load"):
        import_model(store, DEMO / "weights.pt", name="bad", architecture="deeplabv3_mobilenet_v3_large", labels=LABELS)
    with pytest.raises(StoreError, match="do not load"):
        demo_import(store, labels=[*LABELS, "hexagon"])  # 5 labels, 4 output channels
    assert not any(store.root.glob("*/*/manifest.json"))  # nothing half-imported


def reference_checkpoint(state: dict) -> dict:
    """What torchvision's references/segmentation/train.py saves: the state beside the optimizer's,
    the scheduler's, the epoch and its argparse Namespace (refused by a bare weights_only load)."""
    net = ShapesUNet(num_classes=4, width=16)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    net(torch.zeros(1, 3, 32, 32)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10)
    args = argparse.Namespace(model="shapes_unet", lr=0.02, epochs=30, aux_loss=False)
    return {"model": state, "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(), "epoch": 29,
            "args": args}  # fmt: skip


def test_the_usual_shapes_of_a_weights_file_import_as_the_plain_state_dict(store, tmp_path):
    """A training checkpoint and a DDP or torch.compile wrapper's keys are what people have: they
    import as the same plain state_dict (the stored file the worker loads strictly), and the
    manifest says what was done and the source's sha256."""
    state = torch.load(DEMO / "weights.pt", weights_only=True)
    forms = {
        "checkpoint": {"model": state, "epoch": 7, "best_miou": 0.95, "optimizer": {"lr": 0.001}},
        "ddp": {f"module.{k}": v for k, v in state.items()},
        "compiled_in_ddp": {f"module._orig_mod.{k}": v for k, v in state.items()},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "global_step": 3},
        "wrapper_in_ddp": {f"module.net.{k}": v for k, v in state.items()},  # self.net = ... inside DDP
        "torchvision_reference": reference_checkpoint(state),
    }
    for form, obj in forms.items():
        torch.save(obj, tmp_path / f"{form}.pt")
        m = import_model(store, tmp_path / f"{form}.pt", name=form.replace("_", "-"), architecture="shapes_unet",
                         labels=LABELS, arch_kwargs={"width": 16}, target_layer="dec1")  # fmt: skip
        stored = torch.load(store.weights_path(m), weights_only=True)
        assert stored.keys() == state.keys() and all(torch.equal(stored[k], state[k]) for k in state), form
        assert m.metadata["source_sha256"] == sha256_file(tmp_path / f"{form}.pt") and m.metadata["converted"], form
    assert store.resolve("ddp").metadata["converted"] == "removed the 'module.' key prefix"
    assert store.resolve("lightning").metadata["converted"] == (
        "took checkpoint['state_dict'] (beside global_step); removed the 'model.' key prefix"
    )
    assert store.resolve("checkpoint").metadata["converted"].startswith("took checkpoint['model'] (beside ")
    assert "metadata" not in demo_import(store).model_dump(exclude_defaults=True)  # a plain file: left as it is


def test_a_weights_file_that_is_not_a_state_dict_is_refused_in_a_line_saying_what_to_save(store, tmp_path):
    net = ShapesUNet(num_classes=4, width=16)
    bad = {"whole_model": net, "text": None, "hparams_only": {"epoch": 3, "lr": 0.1}, "tensor_list": [torch.zeros(2)]}
    for name, obj in bad.items():
        path = tmp_path / f"{name}.pt"
        path.write_text("not a torch file\n") if obj is None else torch.save(obj, path)
        with pytest.raises(StoreError) as e:
            import_model(store, path, name="bad", architecture="shapes_unet", labels=LABELS, arch_kwargs={"width": 16})
        bad[name] = str(e.value)
    assert "holds pickled Python objects (a worker.archs.shapes_unet.ShapesUNet)" in bad["whole_model"]
    assert "torch.save(model.state_dict(), 'weights.pt')" in bad["whole_model"]
    assert "text.pt is not a file torch.save wrote" in bad["text"]
    assert "it holds a dict with keys epoch, lr" in bad["hparams_only"] and "it holds list" in bad["tensor_list"]
    assert not any(store.root.glob("*/*/manifest.json"))


def test_weights_of_another_shape_are_refused_with_the_cause_not_every_key(store):
    """A strict load's error lists every missing key (hundreds); the refusal names the cause."""
    with pytest.raises(StoreError) as e:
        demo_import(store, labels=[*LABELS, "hexagon"])
    assert "the weights have 4 classes (" in str(e.value) and "but the labels list 5" in str(e.value)
    with pytest.raises(StoreError) as e:
        import_model(store, DEMO / "weights.pt", name="bad", architecture="lraspp_mobilenet_v3_large", labels=LABELS)
    assert "keys are missing (" in str(e.value) and "another architecture's weights?" in str(e.value)
    assert len(str(e.value)) < 500


def test_aliases_deletion_and_traffic_rules(store):
    demo_import(store)
    demo_import(store)
    store.set_alias("shapes", "1", "production")
    with pytest.raises(StoreError, match="alias"):
        store.delete_version("shapes", "1")
    with pytest.raises(StoreError):
        store.set_alias("shapes", "9", "candidate")  # no such version
    with pytest.raises(StoreError):
        store.set_alias("shapes", "1", "2")  # would shadow a version
    store.set_alias("shapes", "2", "candidate")
    store.set_traffic("shapes", {"production": 90, "candidate": 10})
    with pytest.raises(StoreError):
        store.set_traffic("shapes", {"nope": 1})
    store.set_alias("shapes", "2", "production")
    store.set_alias("shapes", "2", "latest")
    store.set_traffic("shapes", {})
    store.delete_version("shapes", "1")
    assert store.versions("shapes") == ["2"]


def test_torchscript_model_is_explained_like_the_eager_one(store, tmp_path):
    class Exported(ShapesUNet):
        def forward(self, x):  # logits and the target activation, segcam's TorchScript convention
            return self.forward_with_features(x)

    net = Exported(4, 16)
    net.load_state_dict(torch.load(DEMO / "weights.pt", weights_only=True))
    ts_path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(net.eval()), ts_path)
    m = import_model(store, ts_path, name="shapes-ts", architecture="ignored", labels=LABELS,
                     input_size=(96, 96), normalization=demo_import(store).normalization)  # fmt: skip
    assert m.format == "torchscript" and m.architecture == "torchscript"
    ts_model = load_model(store, m, torch.device("cpu"))
    eager = load_model(store, store.resolve("shapes"), torch.device("cpu"))
    for s in held_out(3):
        a = Pipeline(ts_model).run([Item("x", png(s.image))], Method.gradcam)[0]
        b = Pipeline(eager).run([Item("x", png(s.image))], Method.gradcam)[0]
        assert a.explanation.class_id == b.explanation.class_id
        assert np.abs(a.cam - b.cam).max() <= 1e-4 and np.array_equal(a.labels, b.labels)


def test_pretrained_bake_uses_the_import_path_with_torchvision_metadata(store):
    torch.manual_seed(0)
    local = build("deeplabv3_mobilenet_v3_large", 21)[0].net.state_dict()  # stands in for the download
    m = bake("deeplabv3_mobilenet_v3_large", store, state=local)
    assert m.name == "deeplabv3-mobilenet-v3-large" and m.labels[:2] == ["__background__", "aeroplane"]
    assert len(m.labels) == 21 and m.input_size == (520, 520)
    assert m.normalization.mean == pytest.approx((0.485, 0.456, 0.406))
    assert "download.pytorch.org" in m.metadata["source"]
    assert store.aliases(m.name) == {"latest": "1", "production": "1"}
    loaded = load_model(store, m, torch.device("cpu"))
    assert loaded.target_layer_name == "backbone.16"


def test_segcam_models_cli_round_trip(tmp_path):
    store = tmp_path / "store"
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "client.cli", "models", "--store", str(store), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip

    weights = tmp_path / "w.pt"
    shutil.copy(DEMO / "weights.pt", weights)
    imp = cli("import", str(weights), "--name", "demo", "--arch", "shapes_unet", "--labels", str(labels),
              "--target-layer", "dec1", "--meta", "trained_by=ci")  # fmt: skip
    assert imp.returncode == 0 and "imported demo:1" in imp.stdout, imp.stderr
    assert cli("import", str(weights), "--name", "demo", "--arch", "shapes_unet", "--labels", str(labels),
               "--version", "1").returncode == 2  # fmt: skip
    assert cli("alias", "demo", "1", "production").returncode == 0
    assert "production->1" in cli("list").stdout
    after = subprocess.run([sys.executable, "-m", "client.cli", "models", "list", "--store", str(store)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert after.returncode == 0 and "production->1" in after.stdout, after.stderr  # --store where it is typed
    shown = json.loads(cli("show", "demo:production").stdout)
    assert shown["metadata"] == {"trained_by": "ci"} and shown["version"] == "1"
    refused = cli("delete", "demo:1")
    assert refused.returncode == 2 and "alias" in refused.stderr
    assert cli("traffic", "demo", "production=100").returncode == 0
