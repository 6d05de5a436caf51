from __future__ import annotations

import json

import pytest

from shared.model_store import ModelNotFound, ModelStore
from tests.conftest import ROOT


def _version(root, name, version, labels=("bg", "cat")):
    d = root / name / version
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(
        json.dumps(
            {
                "name": name,
                "version": version,
                "architecture": "shapes_unet",
                "labels": list(labels),
                "input_size": [32, 32],
                "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]},
                "sha256": "0" * 64,
            }
        )
    )


def test_shipped_demo_model_resolves():
    m = ModelStore(ROOT / "models" / "store").resolve("shapes")
    assert m.labels == ["background", "circle", "square", "triangle"]
    assert m.class_index("square") == 2 and m.class_index("3") == 3


def test_resolve_picks_alias_then_highest_version(tmp_path):
    for v in ("1", "2", "10"):
        _version(tmp_path, "m", v)
    store = ModelStore(tmp_path)
    assert store.resolve("m").version == "10"
    (tmp_path / "m" / "aliases.json").write_text('{"production": "2"}')
    assert store.resolve("m").version == "2"
    assert store.resolve("m:1").version == "1"
    assert store.resolve("m:production").version == "2"


@pytest.mark.parametrize("ref", ["../../etc/passwd", "m:../../x", "m/1", "M", "", "m:", "/abs", "m:1/../2"])
def test_names_that_could_escape_the_store_are_refused(tmp_path, ref):
    _version(tmp_path, "m", "1")
    store = ModelStore(tmp_path)
    if ref == "m:":
        assert store.resolve(ref).version == "1"  # empty tag: default version
        return
    with pytest.raises(ModelNotFound):
        store.resolve(ref)


def test_class_index_errors_name_the_choices(tmp_path):
    _version(tmp_path, "m", "1")
    m = ModelStore(tmp_path).resolve("m")
    with pytest.raises(ValueError, match="out of range"):
        m.class_index("7")
    with pytest.raises(ValueError, match="labels: bg, cat"):
        m.class_index("dog")
