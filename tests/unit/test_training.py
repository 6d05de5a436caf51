"""The demo model is reproducible: the same seed gives the same scenes and the same weights."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT
from training.shapes import HELD_OUT_SEED_BASE, LABELS, make_scene
from training.train_demo import build_parser, training_seeds


def test_scenes_are_a_function_of_the_seed_and_have_every_class():
    a, b = make_scene(7), make_scene(7)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(make_scene(8).mask, a.mask)
    seen = set()
    for s in range(200):
        seen |= set(np.unique(make_scene(s).mask).tolist())
    assert seen == set(range(len(LABELS)))


def _train(out):
    cmd = [sys.executable, "-m", "training.train_demo", "--out", str(out), "--steps", "3", "--batch-size", "4",
           "--size", "32", "--width", "4", "--eval-images", "4", "--seed", "5"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    return json.loads((out / "manifest.json").read_text())


def test_training_is_deterministic_from_its_seed_and_writes_a_card(tmp_path):
    m1 = _train(tmp_path / "a" / "demo" / "1")
    m2 = _train(tmp_path / "b" / "demo" / "1")
    assert m1["sha256"] == m2["sha256"]
    card = (tmp_path / "a" / "demo" / "1" / "MODEL_CARD.md").read_text()
    assert m1["sha256"] in card and "held-out mIoU" in card and "python -m training.train_demo" in card


def test_shipped_model_card_matches_its_weights_and_meets_the_miou_bar():
    d = ROOT / "models" / "store" / "shapes" / "1"
    manifest = json.loads((d / "manifest.json").read_text())
    assert hashlib.sha256((d / "weights.pt").read_bytes()).hexdigest() == manifest["sha256"]
    assert manifest["metadata"]["heldout_miou"] >= 0.9
    assert (d / "weights.pt").stat().st_size < 5_000_000
    assert manifest["sha256"] in (d / "MODEL_CARD.md").read_text()


def test_training_seeds_never_reach_the_held_out_seeds():
    manifest = json.loads((ROOT / "models" / "store" / "shapes" / "1" / "manifest.json").read_text())
    args = build_parser().parse_args(manifest["metadata"]["command"].split()[3:])
    seeds = training_seeds(args.seed, args.steps, args.batch_size)
    assert len(seeds) == manifest["metadata"]["train_images"]
    assert max(seeds) < HELD_OUT_SEED_BASE
