"""benchmarks.upload_body compares a multipart form with a raw body: a fair comparison only if
every way delivers the image intact, the multipart ones through a form parser each."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from benchmarks.upload_body import parse


def test_the_upload_benchmark_times_both_ways_reading_the_same_image():
    img = bytes(range(256)) * 40
    loop = asyncio.new_event_loop()
    try:
        with httpx.Client(base_url="http://127.0.0.1") as c:
            form = c.build_request("POST", "/v1/jobs", files={"image": ("a.png", img)}, data={"model": "demo"})
            form.read()
        for how in ("starlette", "segcam"):
            assert parse(loop, form.content, form.headers["content-type"], how) == img
            with pytest.raises(KeyError):  # no image part: the form path really parses the form
                parse(loop, b"--x--\r\n", "multipart/form-data; boundary=x", how)
        assert parse(loop, img, "image/png", "raw") == img
    finally:
        loop.close()


def test_the_command_keeps_its_table_as_json(tmp_path, monkeypatch, capsys):
    import json

    from benchmarks import run, upload_body

    monkeypatch.setattr(run, "RESULTS", tmp_path)
    assert upload_body.main(["--kb", "2", "--rounds", "5"]) == 0
    (saved,) = tmp_path.glob("upload_body-*.json")
    rows = json.loads(saved.read_text())["rows"]
    assert set(rows) == {
        "client: httpx builds and encodes the request",
        "API: Starlette's form parser reads the image",
        "API: segcam's form reader (api/multipart.py)",
    }
    segcam = rows["API: segcam's form reader (api/multipart.py)"]
    assert segcam["multipart_p50_us"] > 0 and segcam["raw_p50_us"] > 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("| API: segcam's form reader")]
    assert abs(float(line.split(" | ")[1]) - segcam["multipart_p50_us"]) <= 1  # the same figure, printed to 1 us
