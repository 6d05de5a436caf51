"""Overload becomes queueing, then a clear refusal; keys, ownership, rate limits and
idempotency, on real API processes, a real worker and the real Redis."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from tests.conftest import cleanup_prefix
from tests.integration.procs import Procs, scene_png, wait_final, wait_until

pytestmark = pytest.mark.integration

KEY_A, KEY_B, KEY_C = "key-a-0123456789", "key-b-9876543210", "key-c-5555555555"


@pytest.fixture(scope="module")
def guarded(redis_url, run_prefix, tmp_path_factory):
    """Two gateways on one queue: one with API keys and a rate limit, one with a small queue bound."""
    prefix = f"{run_prefix}-guard"
    base = {"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_FAULT_INJECTION": "true",
            "SEGCAM_WORKER_HEARTBEAT_S": "1"}  # fmt: skip
    logs = tmp_path_factory.mktemp("guard-logs")
    hashes = ",".join(hashlib.sha256(k.encode()).hexdigest() for k in (KEY_A, KEY_B, KEY_C))
    keyed = Procs({**base, "SEGCAM_API_KEY_HASHES": hashes, "SEGCAM_RATE_LIMIT_PER_MINUTE": "8"}, logs)
    bounded = Procs({**base, "SEGCAM_MAX_QUEUE_DEPTH": "4"}, logs)
    keyed.api()
    bounded.api()
    bounded.worker("w1@guard")
    bounded.wait_workers(["w1@guard"])
    yield keyed, bounded
    keyed.close()
    bounded.close()
    cleanup_prefix(redis.Redis.from_url(redis_url), prefix)


def post(url: str, data: bytes, key: str | None = None, **headers: str) -> httpx.Response:
    h = {**headers, **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(f"{url}/v1/jobs", files={"image": ("a.png", data)}, headers=h, timeout=30)


def test_api_keys_are_required_and_a_job_is_visible_only_to_its_key(guarded):
    keyed, _ = guarded
    r = post(keyed.url, scene_png(1))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized" and "www-authenticate" in r.headers
    r = post(keyed.url, scene_png(1), key="not-a-key")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = post(keyed.url, scene_png(1), key=KEY_A)
    assert r.status_code == 202
    jid = r.json()["id"]
    as_a = {"Authorization": f"Bearer {KEY_A}"}
    as_b = {"X-API-Key": KEY_B}
    assert httpx.get(f"{keyed.url}/v1/jobs/{jid}", headers=as_a).status_code == 200
    for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/artifacts/mask")]:
        r = httpx.request(method, f"{keyed.url}/v1/jobs/{jid}{path}", headers=as_b)
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    assert httpx.get(f"{keyed.url}/v1/jobs/{jid}").status_code == 401
    done = wait_until(
        lambda: (j := httpx.get(f"{keyed.url}/v1/jobs/{jid}", headers=as_a).json())["status"] == "succeeded" and j,
        60, "job done",
    )  # fmt: skip
    assert done["id"] == jid


def test_rate_limit_per_key_answers_429_with_retry_after(guarded):
    keyed, _ = guarded
    while time.time() % 60 > 55:  # keep the burst inside one one-minute window
        time.sleep(0.5)
    codes = [post(keyed.url, scene_png(2), key=KEY_C).status_code for _ in range(10)]
    assert codes.count(202) <= 8 and 429 in codes
    r = post(keyed.url, scene_png(2), key=KEY_C)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60


def test_idempotency_key_returns_the_same_job(guarded):
    keyed, _ = guarded
    first = post(keyed.url, scene_png(3), key=KEY_A, **{"Idempotency-Key": "order-42"})
    again = post(keyed.url, scene_png(3), key=KEY_A, **{"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers.get("idempotent-replayed") == "true"
    other_body = post(keyed.url, scene_png(4), key=KEY_A, **{"Idempotency-Key": "order-42"})
    assert other_body.status_code == 422 and other_body.json()["error"]["code"] == "idempotency_key_reused"
    other_key = post(keyed.url, scene_png(3), key=KEY_B, **{"Idempotency-Key": "order-42"})
    assert other_key.status_code == 202 and other_key.json()["id"] != first.json()["id"]  # keys are per API key


def test_a_full_queue_refuses_with_429_and_retry_after_and_loses_nothing_accepted(guarded):
    _, bounded = guarded
    slow = scene_png(5, fault="sleep:0.4@preprocess")
    warm = [post(bounded.url, slow).json()["id"] for _ in range(3)]  # a drain rate to measure
    for w in warm:
        wait_final(bounded.url, w)
    with ThreadPoolExecutor(12) as pool:
        timed = list(pool.map(lambda _i: _timed_post(bounded.url, slow), range(24)))
    accepted = [r.json()["id"] for r, _ in timed if r.status_code == 202]
    refused = [(r, dt) for r, dt in timed if r.status_code == 429]
    assert accepted and refused and len(accepted) + len(refused) == 24
    for r, _dt in refused:
        assert r.json()["error"]["code"] == "queue_full"
        assert 1 <= int(r.headers["retry-after"]) <= 30  # from the measured rate (~2 jobs/s), not a constant
    assert [wait_final(bounded.url, j, timeout=120)["status"] for j in accepted] == ["succeeded"] * len(accepted)


def _timed_post(url: str, data: bytes) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = post(url, data)
    return r, time.perf_counter() - t0
