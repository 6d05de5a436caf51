"""The gateway on its own (real Redis, no worker): contract, validation, nothing queued on refusal."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from shared.keys import Keys
from shared.schemas import ImageInfo, JobSpec
from tests.conftest import ROOT


def png(w=64, h=48, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), 90).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def queue_len(rclient, settings) -> int:
    return rclient.llen(Keys(settings.key_prefix).celery_queue("shapes"))


def test_submit_answers_202_with_id_location_and_position(client, rclient, settings):
    r = client.post("/v1/jobs", files={"image": ("x.png", png())})
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/jobs/{body['id']}" == body["url"]
    assert body["status"] == "queued" and body["position"] == 0
    assert queue_len(rclient, settings) == 1
    msg = json.loads(rclient.lindex(Keys(settings.key_prefix).celery_queue("shapes"), 0))
    assert msg["headers"]["task"] == "segcam.segment" and msg["content-type"] == "application/json"
    assert len(msg["body"]) < 1000  # only the job ID travels; the image stays in its own key

    job = client.get(body["url"]).json()
    assert job["status"] == "queued" and job["position"] == 0 and job["model"] == "shapes"
    assert job["model_version"] == "1" and job["method"] == "gradcam" and job["target_class"] is None
    second = client.post("/v1/jobs", files={"image": ("y.png", png())}).json()
    assert second["position"] == 1


def test_class_given_by_label_is_resolved_to_its_index(client):
    r = client.post(
        "/v1/jobs", files={"image": ("x.png", png())}, data={"target_class": "square", "method": "hirescam"}
    )
    job = client.get(r.json()["url"]).json()
    assert job["target_class"] == 2 and job["method"] == "hirescam"


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        ({"image": ("a.png", b"just some text")}, {}, 415, "not_an_image"),
        ({"image": ("a.png", b"")}, {}, 400, "empty_image"),
        ({"image": ("a.png", png())}, {"model": "nope"}, 422, "unknown_model"),
        ({"image": ("a.png", png())}, {"model": "../etc"}, 422, "unknown_model"),
        ({"image": ("a.png", png())}, {"target_class": "dog"}, 422, "unknown_class"),
        ({"image": ("a.png", png())}, {"target_class": "9"}, 422, "unknown_class"),
        ({"image": ("a.png", png())}, {"method": "scorecam"}, 422, "unknown_method"),
        ({"file": ("a.png", png())}, {}, 422, "unknown_field"),
        ({"image": ("a.png", png())}, {"priority": "urgent"}, 422, "unknown_priority"),
        ({"image": ("a.png", png())}, {"model": "x" * 300}, 422, "field_too_long"),
    ],
)
def test_bad_submissions_get_a_4xx_json_error_and_nothing_is_queued(
    client, rclient, settings, files, data, status, code
):
    r = client.post("/v1/jobs", files=files, data=data)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert queue_len(rclient, settings) == 0
    assert not list(rclient.scan_iter(match=f"{settings.key_prefix}:job:*"))


def test_missing_image_is_a_422_naming_the_field(client):
    r = client.post("/v1/jobs", data={"model": "shapes"})
    assert r.status_code == 422 and "image" in r.json()["error"]["message"]


def test_image_as_text_and_options_as_files_are_422s_naming_the_field(client, rclient, settings):
    r = client.post("/v1/jobs", data={"image": "not a file"})
    assert r.status_code == 422 and "'image'" in r.json()["error"]["message"]
    r = client.post("/v1/jobs", files={"image": ("a.png", png()), "model": ("m.txt", b"shapes")})
    assert r.status_code == 422 and "'model'" in r.json()["error"]["message"]
    assert queue_len(rclient, settings) == 0


def test_the_openapi_form_lists_every_accepted_field(client):
    from api.validation import FORM_FIELDS

    body = client.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert body["required"] and schema["required"] == ["image"] and tuple(schema["properties"]) == FORM_FIELDS


def test_image_over_the_pixel_cap_is_413(settings):
    small = settings.model_copy(update={"max_pixels": 1000})
    with TestClient(create_app(small)) as c:
        r = c.post("/v1/jobs", files={"image": ("a.png", png(100, 100))})
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"


def test_unknown_job_is_404_not_pending(client):
    for jid in ("0" * 32, "not-a-job", "A" * 32):
        r = client.get(f"/v1/jobs/{jid}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    r = client.get("/v1/jobs/../../x")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_artifact_of_a_queued_job_is_409_and_unknown_artifact_404(client):
    url = client.post("/v1/jobs", files={"image": ("x.png", png())}).json()["url"]
    r = client.get(f"{url}/artifacts/mask")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_ready"
    assert client.get(f"{url}/artifacts/weights").status_code == 404


def test_models_lists_labels_and_methods(client):
    body = client.get("/v1/models").json()
    assert body["default"] == "shapes"
    shapes = next(m for m in body["models"] if m["name"] == "shapes")
    assert shapes["labels"] == ["background", "circle", "square", "triangle"]
    assert "eigencam" in body["methods"] and shapes["workers"] == []


def test_health_and_readiness_without_workers(client):
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["redis"] is True and r.json()["workers"] == []


def test_openapi_documents_every_route_and_the_error_shape(client):
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/artifacts/{name}",
        "/v1/models",
        "/healthz",
        "/readyz",
    ):
        assert path in spec["paths"]
    assert "ErrorResponse" in spec["components"]["schemas"]
    assert "422" in spec["paths"]["/v1/jobs"]["post"]["responses"]
    assert client.get("/docs").status_code == 200


def test_unknown_route_and_wrong_method_are_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.delete("/v1/models")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_the_gateway_never_imports_torch_gradcam_or_the_worker():
    code = (
        "import sys, api.main, api.__main__; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'pytorch_grad_cam', 'worker', 'cv2', 'sklearn')); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_long_poll_sees_a_job_that_ended_while_it_subscribed(client, rclient, settings):
    """The final message can come before the subscription is in place: the record is read
    again after subscribing, so the poll answers at once instead of at its deadline."""
    jid = client.post("/v1/jobs", files={"image": ("x.png", png())}).json()["id"]
    assert client.get(f"/v1/jobs/{jid}", params={"wait": 0.2}).json()["status"] == "queued"  # hub now listening
    hub = client.app.state.events
    subscribe = hub.follow

    async def follow_as_the_job_ends(job_id, queue=None):
        f = await subscribe(job_id, queue)
        err = json.dumps({"code": "internal_error", "message": "ended unheard"})
        rclient.hset(Keys(settings.key_prefix).job(job_id), mapping={"status": "failed", "error": err})
        return f

    hub.follow = follow_as_the_job_ends
    t0 = time.monotonic()
    r = client.get(f"/v1/jobs/{jid}", params={"wait": 10})
    assert r.status_code == 200 and r.json()["status"] == "failed"
    assert time.monotonic() - t0 < 5  # not held to the deadline


def test_submit_with_wait_answers_202_when_the_job_is_not_done_in_time(client, rclient, settings):
    t0 = time.monotonic()
    r = client.post("/v1/jobs", files={"image": ("x.png", png())}, params={"wait": 0.5})  # no worker here
    assert r.status_code == 202 and r.json()["status"] == "queued" and r.json()["position"] == 0
    assert 0.4 < time.monotonic() - t0 < 5 and r.headers["location"] == r.json()["url"]
    assert queue_len(rclient, settings) == 1
    bad = client.post("/v1/jobs", files={"image": ("x.png", png())}, params={"wait": 61})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_a_long_poll_reads_the_record_again_only_for_news_that_can_be_final(monkeypatch):
    """Stage messages say the job is still running: re-reading for each would cost a Redis
    call per stage per waiting client."""
    import asyncio
    from types import SimpleNamespace

    from api.events import Follower
    from api.routes import jobs as routes

    states = iter(["running", "succeeded"])
    reads = []

    def load(_svc, job_id, _who):
        reads.append(job_id)
        return SimpleNamespace(status=SimpleNamespace(final=next(states) == "succeeded"))

    monkeypatch.setattr(routes, "load", load)

    async def run():
        f = Follower(("ch",))
        for m in ("preprocess", "inference", "cam", "encode", "succeeded"):
            f.put(m)
        return await routes.until_final(None, f, "j", None, 5)

    f_wait = Follower.wait

    async def one_at_a_time(self, timeout):  # deliver messages singly, as if they came apart
        got = await f_wait(self, timeout)
        for m in got[1:]:
            self.put(m)
        return got[:1]

    monkeypatch.setattr(Follower, "wait", one_at_a_time)
    assert asyncio.run(run()).status.final
    assert len(reads) == 2  # before waiting, and after "succeeded"


def test_a_wait_on_a_fresh_job_reads_nothing_when_the_final_event_carries_the_record(monkeypatch):
    """``POST ?wait`` subscribed before queuing and the final event holds the record: the
    answer costs no Redis read (a stale or foreign record in an event is not trusted)."""
    import asyncio
    from types import SimpleNamespace

    from api.events import Follower
    from api.routes import jobs as routes

    reads = []

    def load(_svc, job_id, _who):
        reads.append(job_id)
        raise LookupError("the real load answers 404 for another key's job")

    monkeypatch.setattr(routes, "load", load)
    fields = {"id": "j", "status": "succeeded", "spec": JobSpec(model="shapes", model_version="1", image=ImageInfo(
        format="PNG", width=4, height=4, bytes=10)).model_dump_json(), "queue": "q", "created_at": "1.0",
        "finished_at": "2.0", "owner": "me"}  # fmt: skip

    async def run(owner: str):
        f = Follower(("ch",))
        for m in ("inference", "cam", "succeeded " + json.dumps(fields)):
            f.put(m)
        return await routes.until_final(None, f, "j", SimpleNamespace(owner=owner), 5, fresh=True)

    rec = asyncio.run(run("me"))
    assert rec.status.value == "succeeded" and rec.finished_at == 2.0 and reads == []
    with pytest.raises(LookupError):  # not their job's record: read it the normal way
        asyncio.run(run("someone else"))
    assert reads == ["j"]


def test_a_follower_wakes_on_a_message_times_out_empty_and_keeps_what_came_late():
    import asyncio

    from api.events import Follower

    async def run():
        f = Follower(("ch",))
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, f.put, "inference")
        loop.call_later(0.05, f.put, "cam")
        t0 = loop.time()
        first = await f.wait(5)
        woke = loop.time() - t0
        t0 = loop.time()
        quiet = await f.wait(0.1)
        waited = loop.time() - t0
        f.put("succeeded {}")  # nobody waiting: kept for the next wait, which returns at once
        t0 = loop.time()
        late = await f.wait(5)
        return first, woke, quiet, waited, late, loop.time() - t0

    first, woke, quiet, waited, late, at_once = asyncio.run(run())
    assert first == ["inference", "cam"] and woke < 1
    assert quiet == [] and waited >= 0.09
    assert late == ["succeeded {}"] and at_once < 0.05


def test_a_queued_job_says_how_many_live_workers_serve_its_model(settings, rclient):
    """0 tells a client why its job does not move; an ETA of None alone does not."""
    from shared.presence import Heartbeat

    keys = Keys(settings.key_prefix)
    with TestClient(create_app(settings.model_copy(update={"events_position_interval_s": 0}))) as c:
        url = c.post("/v1/jobs", files={"image": ("x.png", png())}).json()["url"]
        assert c.get(url).json()["workers"] == 0
        other = Heartbeat(rclient, keys, "w-other@h", {"device": "cpu", "models": ["roads"]}, interval_s=60)
        other.beat()
        assert c.get(url).json()["workers"] == 0  # alive, but not for this model
        ours = Heartbeat(rclient, keys, "w-ours@h", {"device": "cpu", "models": ["shapes"]}, interval_s=60)
        ours.beat()
        job = c.get(url).json()
        assert job["workers"] == 1 and job["status"] == "queued"
        other.update(models=["roads", "shapes"])  # a worker that took the model up later
        assert c.get(url).json()["workers"] == 2


def test_cors_is_off_by_default_and_on_for_the_configured_origins(settings):
    """A page on another origin (a labelling tool, a notebook's front end) can submit, read the
    Location and Retry-After headers, and read a refusal, when its origin is configured."""
    page = "http://labeller.example:3000"
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/jobs", files={"image": ("x.png", png())}, headers={"Origin": page})
        assert r.status_code == 202 and "access-control-allow-origin" not in r.headers
    settings.cors_origins = (page,)
    settings.max_upload_bytes = 10_000
    with TestClient(create_app(settings)) as c:
        asks = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,idempotency-key",
        }
        pre = c.options("/v1/jobs", headers={"Origin": page, **asks})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == page
        assert "idempotency-key" in pre.headers["access-control-allow-headers"].lower()
        r = c.post("/v1/jobs", files={"image": ("x.png", png())}, headers={"Origin": page})
        assert r.status_code == 202 and r.headers["access-control-allow-origin"] == page
        assert "location" in r.headers["access-control-expose-headers"].lower()
        big = c.post("/v1/jobs", files={"image": ("x.png", png(400, 400, "RGB") + b"\0" * 20_000)},
                     headers={"Origin": page})  # fmt: skip
        assert big.status_code == 413 and big.headers["access-control-allow-origin"] == page
        other = c.get("/healthz", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers
