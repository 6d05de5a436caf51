"""The `segcam` command against the real stack: submit a folder with progress, status, models."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.integration.procs import scene_png

pytestmark = pytest.mark.integration


def segcam(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEGCAM_URL": stack.url}
    return subprocess.run([sys.executable, "-m", "client.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_submit_a_folder_waits_with_progress_and_writes_every_jobs_artifacts(stack, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"img{i}.png").write_bytes(scene_png(500 + i, size=(120 + 10 * i, 90)))
    (folder / "notes.txt").write_text("not an image; skipped by suffix")
    (folder / "more").mkdir()  # same file name one folder down: its own results, not img0's overwritten
    (folder / "more" / "img0.png").write_bytes(scene_png(503, size=(150, 90)))
    out = tmp_path / "out"
    done = segcam(stack, "submit", str(folder), "--wait", "--out", str(out), "--method", "layercam")
    assert done.returncode == 0, done.stderr
    assert "skipped 1 file(s)" in done.stderr and "wrote 4 result(s)" in done.stderr
    for i, d in [(0, out / "img0"), (1, out / "img1"), (2, out / "img2"), (3, out / "more" / "img0")]:
        assert Image.open(d / "overlay.png").size == (120 + 10 * i, 90)
        result = json.loads((d / "result.json").read_text())
        assert result["status"] == "succeeded" and result["method"] == "layercam"
    summary = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines()]
    assert sorted(r["dir"] for r in summary) == ["img0", "img1", "img2", "more/img0"]
    assert {r["status"] for r in summary} == {"succeeded"} and all(len(r["job_id"]) == 32 for r in summary)
    progress = done.stderr
    assert "queued, position" in progress and "succeeded" in progress and "img2.png" in progress
    # Run again over the folder with one image more: only that one is sent, two at a time at most.
    # A photo: its overlay comes back as a JPEG and is saved under that suffix.
    Image.open(io.BytesIO(scene_png(509, size=(100, 90)))).save(folder / "img9.jpg", quality=90)
    again = segcam(stack, "submit", str(folder), "--out", str(out), "--skip-done", "--parallel", "2")
    assert again.returncode == 0, again.stderr
    assert "skipped 4 image(s) with results under" in again.stderr and "wrote 1 result(s)" in again.stderr
    assert Image.open(out / "img9" / "mask.png").size == (100, 90)
    assert Image.open(out / "img9" / "overlay.jpg").format == "JPEG" and not (out / "img9" / "overlay.png").exists()
    (line,) = (out / "summary.jsonl").read_text().splitlines()  # this run's images: the one sent
    assert json.loads(line) | {"job_id": None} == {"image": "img9.jpg", "job_id": None, "status": "succeeded",
                                                   "error": None, "dir": "img9"}  # fmt: skip


def test_status_and_models_commands(stack, tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(scene_png(510))
    sub = segcam(stack, "submit", str(img))
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.split()[0]
    status = segcam(stack, "status", job_id, "--wait", "30")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"
    models = segcam(stack, "models")
    assert models.returncode == 0 and "shapes:1 (default)" in models.stdout and "1=circle" in models.stdout
    missing = segcam(stack, "status", "f" * 32)
    assert missing.returncode == 1 and "job_not_found" in missing.stderr


def test_a_refused_image_is_reported_in_words_and_the_exit_code(stack, tmp_path):
    bad = tmp_path / "fake.png"
    bad.write_text("hello")
    done = segcam(stack, "submit", str(bad), "--wait")
    assert done.returncode == 1 and "refused: not_an_image" in done.stderr
