"""First-request costs are paid at start-up: the gateway's warm-up (api/warmup.py) and the
worker's (worker/runtime.py). The gateway's warm-up goes through the app itself, so it must
be refused before anything is stored or queued, and it must never stop a gateway starting."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from api import warmup
from api.main import create_app
from api.warmup import BOUNDARY, call, refused_submission, warm_up
from tests.conftest import ROOT

CONTENT_TYPE = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]


def keys_of(rclient, prefix: str) -> list[bytes]:
    return list(rclient.scan_iter(match=f"{prefix}*", count=1000))


@pytest.mark.parametrize("api_keys", [False, True])
def test_the_warm_up_submission_is_refused_by_the_form_check_and_queues_nothing(settings, rclient, api_keys):
    if api_keys:  # refused by the form check before the key is asked for, so the warm-up needs none
        settings = settings.model_copy(update={"api_key_hashes": hashlib.sha256(b"k").hexdigest()})
    app = create_app(settings)
    status, body = asyncio.run(call(app, "POST", "/v1/jobs", refused_submission(), CONTENT_TYPE))
    assert status == 422
    error = json.loads(body)["error"]
    assert error["code"] == "unknown_field" and "'warm_up'" in error["message"]
    assert asyncio.run(warm_up(app, app.state.services)) == 422
    assert keys_of(rclient, settings.key_prefix) == []  # no upload, record, queue entry or message


def test_the_same_form_without_the_refused_field_would_be_a_job(settings, rclient):
    """The warm-up's form is a real submission but for its one unknown field: what it warms
    is the path a user's first job takes."""
    with TestClient(create_app(settings)) as c:
        assert keys_of(rclient, settings.key_prefix) == []  # the start-up's warm-up left nothing
        r = c.post("/v1/jobs", content=warmup.form({"method": "gradcam"}),
                   headers={"content-type": CONTENT_TYPE[0][1].decode()})  # fmt: skip
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    assert keys_of(rclient, settings.key_prefix)


FRESH_API = """
import sys
from PIL import Image
from fastapi.testclient import TestClient
from api.main import create_app
app = create_app()
before = Image._initialized
with TestClient(app) as c:
    hub = app.state.events.task is not None
    print(before, Image._initialized, "PIL.WebPImagePlugin" in sys.modules, hub, c.get("/healthz").status_code)
"""


def test_a_fresh_gateway_has_its_image_plugins_and_event_stream_before_the_first_request(settings, rclient):
    env = {**os.environ, "SEGCAM_REDIS_URL": settings.redis_url, "SEGCAM_KEY_PREFIX": settings.key_prefix}
    out = subprocess.run([sys.executable, "-c", FRESH_API], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, webp, hub, health = out.stdout.split()[-5:]
    assert (before, after, webp, hub, health) == ("0", "2", "True", "True", "200")
    assert keys_of(rclient, settings.key_prefix) == []


def test_a_failing_warm_up_does_not_stop_the_gateway(settings, monkeypatch):
    def broken() -> None:
        raise OSError("plugins unavailable")

    monkeypatch.setattr(warmup.Image, "init", broken)
    app = create_app(settings)
    assert asyncio.run(warm_up(app, app.state.services)) == 0
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200


FRESH_WORKER = """
from worker import runtime
from worker.runner import software_versions
runtime.init("warm-test")
info = software_versions.cache_info()
print(info.misses, info.currsize)
"""


def test_the_worker_reads_the_software_versions_before_its_first_job(settings):
    """Every result's ``reproduce`` block records them; importlib.metadata takes milliseconds
    a read, once paid by the first job."""
    env = {**os.environ, "SEGCAM_REDIS_URL": settings.redis_url, "SEGCAM_KEY_PREFIX": settings.key_prefix,
           "SEGCAM_DEVICE": "cpu"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", FRESH_WORKER], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["1", "1"]
