"""Job records on the real Redis: positions, claims, and final states that cannot be overwritten."""

from __future__ import annotations

import pytest

from shared.artifacts import ArtifactStore
from shared.jobs import JobStore
from shared.keys import Keys
from shared.schemas import (
    ClassStat,
    Explanation,
    ImageInfo,
    ImageSize,
    JobResult,
    JobSpec,
    JobStatus,
    ModelRef,
    Timings,
)


@pytest.fixture
def store(rclient, prefix):
    return JobStore(rclient, Keys(prefix), job_ttl_s=60, upload_ttl_s=60)


SPEC = JobSpec(model="shapes", model_version="1", image=ImageInfo(format="PNG", width=4, height=4, bytes=10))
RESULT = JobResult(
    model=ModelRef(name="shapes", version="1", sha256="0" * 64),
    image=ImageSize(width=4, height=4),
    classes=[ClassStat(id=0, label="background", pixel_fraction=1.0, mean_confidence=0.9)],
    explanation=Explanation(class_id=None, class_label=None, method="gradcam", target_layer="dec1", empty=True),
    timings_ms=Timings(queue_wait_ms=1, preprocess_ms=1, inference_ms=1, cam_ms=1, encode_ms=1, total_ms=4),
)


def test_positions_follow_submit_order_and_count_down(store):
    ids = [f"{i:032x}" for i in range(5)]
    assert [store.create(j, SPEC, "q", b"img") for j in ids] == [0, 1, 2, 3, 4]
    assert store.get(ids[3]).position == 3
    assert store.start(ids[0], "q", "w1") == 1
    assert store.get(ids[3]).position == 2
    assert store.get(ids[0]).status is JobStatus.running and store.get(ids[0]).position is None


def test_a_final_state_is_recorded_once(store, rclient, prefix):
    jid = "a" * 32
    store.create(jid, SPEC, "q", b"img")
    assert store.start(jid, "q", "w1") == 1
    assert store.succeed(jid, "q", RESULT) is True
    assert store.fail(jid, "q", "internal_error", "late duplicate") is False  # cannot overwrite
    assert store.succeed(jid, "q", RESULT) is False
    rec = store.get(jid)
    assert rec.status is JobStatus.succeeded and rec.error is None and rec.result == RESULT
    assert store.start(jid, "q", "w2") == "succeeded"  # a redelivery is told not to run
    assert rclient.get(Keys(prefix).upload(jid)) is None  # the upload is freed once final


def test_redelivery_counts_deliveries(store):
    jid = "b" * 32
    store.create(jid, SPEC, "q", b"img")
    assert store.start(jid, "q", "w1") == 1
    assert store.start(jid, "q", "w2") == 2
    assert store.get(jid).worker == "w2"


def test_unknown_job_is_none_and_start_says_missing(store):
    assert store.get("c" * 32) is None
    assert store.start("c" * 32, "q", "w") == "missing"


def test_records_and_blobs_expire(store, rclient, prefix):
    jid = "d" * 32
    store.create(jid, SPEC, "q", b"img")
    keys = Keys(prefix)
    assert 0 < rclient.ttl(keys.job(jid)) <= 60 and 0 < rclient.ttl(keys.upload(jid)) <= 60
    arts = ArtifactStore(rclient, keys, ttl_s=30)
    arts.put(jid, {"mask": b"m"})
    assert arts.get(jid, "mask") == b"m" and 0 < rclient.ttl(keys.artifact(jid, "mask")) <= 30
    assert arts.get(jid, "../../etc") is None
    with pytest.raises(ValueError):
        arts.put(jid, {"evil": b"x"})
