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


def test_a_version_or_alias_made_a_moment_ago_is_found_through_the_cache(tmp_path, monkeypatch):
    """The gateway trusts a read for ``cache_ttl_s``: a version imported within it used to be
    refused as unknown (``422``) until the read expired. A miss is read again; a hit is not."""
    _version(tmp_path, "m", "1")
    store = ModelStore(tmp_path, cache_ttl_s=3600)
    assert store.resolve("m").version == "1"
    _version(tmp_path, "m", "2")  # segcam models import, from another process
    (tmp_path / "m" / "aliases.json").write_text('{"candidate": "2"}')
    assert store.resolve("m:2").version == "2" and store.resolve("m:candidate").version == "2"
    assert store.resolve("m:1").version == "1"  # read again after the miss dropped the model's reads
    disk = []
    real = ModelStore._model_dir
    monkeypatch.setattr(ModelStore, "_model_dir", lambda self, name: disk.append(name) or real(self, name))
    assert store.resolve("m:1").version == "1" and store.resolve("m:candidate").version == "2"
    assert disk == []  # hits: from the cache
    with pytest.raises(ModelNotFound, match="no version or alias '3'"):
        store.resolve("m:3")
    assert disk  # a miss: read again before it is refused


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


@pytest.mark.parametrize("damage", ["not json {", "std 0"])
def test_a_damaged_manifest_is_a_model_not_found_naming_it_not_a_crash(tmp_path, damage):
    _version(tmp_path, "m", "1")
    _version(tmp_path, "m", "2")
    f = tmp_path / "m" / "2" / "manifest.json"
    if damage == "std 0":  # a division by zero in every job, had it loaded
        f.write_text(f.read_text().replace('"std": [1, 1, 1]', '"std": [0, 1, 1]'))
    else:
        f.write_text(damage)
    store = ModelStore(tmp_path)
    with pytest.raises(ModelNotFound, match="m:2 has an invalid manifest"):
        store.resolve("m")
    assert store.resolve("m:1").version == "1"


def test_the_gateway_lists_the_models_beside_a_damaged_one_and_refuses_jobs_for_it(tmp_path, settings):
    from fastapi.testclient import TestClient

    from api.main import create_app

    _version(tmp_path, "good", "1")
    _version(tmp_path, "bad", "1")
    (tmp_path / "bad" / "1" / "manifest.json").write_text("{")
    with TestClient(create_app(settings.model_copy(update={"model_dir": tmp_path, "default_model": "good"}))) as c:
        listed = c.get("/v1/models")
        assert listed.status_code == 200 and [m["name"] for m in listed.json()["models"]] == ["good"]
        r = c.post("/v1/jobs", files={"image": ("a.png", _png(), "image/png")}, data={"model": "bad"})
        assert r.status_code == 422 and "bad:1 has an invalid manifest" in r.json()["error"]["message"]


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), 90).save(buf, "PNG")
    return buf.getvalue()
