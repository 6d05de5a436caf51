"""Job records on the real Redis: positions, claims, and final states that cannot be overwritten."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from shared.artifacts import ArtifactStore
from shared.jobs import Completed, JobRecord, JobStore
from shared.keys import Keys
from shared.schemas import (
    ClassStat,
    Explanation,
    ImageInfo,
    ImageSize,
    JobResult,
    JobSpec,
    JobStatus,
    Method,
    ModelRef,
    Timings,
)
from shared.settings import Settings


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
    assert [store.create(j, SPEC, "q", b"img").position for j in ids] == [0, 1, 2, 3, 4]
    assert store.get(ids[3]).position == 3
    assert store.claim("q", "tok1", "w1") == [ids[0]]
    assert store.get(ids[3]).position == 2
    rec = store.get(ids[0])
    assert rec.status is JobStatus.running and rec.position is None and rec.worker == "w1" and rec.token == "tok1"


def test_a_job_claimed_between_the_record_and_its_rank_reads_as_running(store, monkeypatch):
    """Never "queued" without a position: a worker claimed it between the two reads."""
    job_id = "a" * 32
    store.create(job_id, SPEC, "q", b"img")
    zrank = store.r.zrank

    def claimed_meanwhile(*args):
        monkeypatch.setattr(store.r, "zrank", zrank)
        assert store.claim("q", "tok", "w") == [job_id]
        return zrank(*args)

    monkeypatch.setattr(store.r, "zrank", claimed_meanwhile)
    rec = store.get(job_id)
    assert rec.status is JobStatus.running and rec.position is None and rec.worker == "w"


def test_priority_band_goes_before_older_jobs_of_lower_bands(store):
    store.create("1" * 32, SPEC, "q", b"i", priority_band=1)
    store.create("2" * 32, SPEC, "q", b"i", priority_band=1)
    store.create("3" * 32, SPEC, "q", b"i", priority_band=0)
    assert store.get("3" * 32).position == 0 and store.get("1" * 32).position == 1
    assert store.claim("q", "t", "w", max_jobs=3) == ["3" * 32, "1" * 32, "2" * 32]


def test_started_at_is_the_claim_s_own_time_whoever_s_clock_lags(store, rclient, monkeypatch):
    """Two workers' claims carry started_at in claim order: the script stamps Redis's clock, so a
    worker descheduled between reading its clock and claiming cannot start a job "earlier"."""
    ids = [f"{i:032x}" for i in range(3)]
    for j in ids:
        store.create(j, SPEC, "q", b"img")
    lagging = iter([2000.0, 1000.0])  # each caller's clock, the second one behind the first
    monkeypatch.setattr("shared.jobs.time.time", lambda: next(lagging, 0.0))
    assert store.claim("q", "t1", "w1") == [ids[0]] and store.claim("q", "t2", "w2") == [ids[1]]
    assert store.succeed(ids[0], "q", RESULT) and store.cancel(ids[2], "q") == "cancelled"  # and the ends
    monkeypatch.undo()
    first, second = (store.get(j).started_at for j in ids[:2])
    sec, usec = rclient.time()
    assert first <= second <= sec + usec / 1e6 < first + 5
    assert first <= store.get(ids[0]).finished_at <= store.get(ids[2]).finished_at <= sec + usec / 1e6


def test_a_batch_claim_takes_only_jobs_that_share_the_head_method(store):
    hires = SPEC.model_copy(update={"method": Method.hirescam})
    for i, spec in enumerate([SPEC, hires, SPEC, SPEC]):
        store.create(f"{i:032x}", spec, "q", b"img")
    assert store.claim("q", "t1", "w", max_jobs=8) == [f"{i:032x}" for i in (0, 2, 3)]
    assert store.claim("q", "t2", "w", max_jobs=8) == [f"{1:032x}"]
    assert store.claim("q", "t3", "w", max_jobs=8) == []  # a spare token finds nothing to do


def test_a_final_state_is_recorded_once(store, rclient, prefix):
    jid = "a" * 32
    store.create(jid, SPEC, "q", b"img")
    assert store.claim("q", "t", "w1") == [jid]
    assert store.succeed(jid, "q", RESULT) is True
    assert store.fail(jid, "q", "internal_error", "late duplicate") is False  # cannot overwrite
    assert store.succeed(jid, "q", RESULT) is False
    rec = store.get(jid)
    assert rec.status is JobStatus.succeeded and rec.error is None and rec.result == RESULT
    assert store.reclaim("t", "w2") == []  # a redelivered token does not run it again
    assert rclient.get(Keys(prefix).upload(jid)) is None  # the upload is freed once final


def test_the_final_event_carries_the_final_record(store, rclient, prefix):
    """A follower waiting for the end answers from the event, without reading the record."""
    a, b = "a" * 32, "b" * 32
    for j in (a, b):
        store.create(j, SPEC, "q", b"img", owner="key1")
    assert store.claim("q", "t", "w1", max_jobs=2) == [a, b]
    ps = rclient.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(Keys(prefix).job_events(a), Keys(prefix).job_events(b))
    for _ in range(2):  # both subscriptions confirmed
        assert ps.parse_response(timeout=5)[0] == b"subscribe"
    artifacts = ArtifactStore(rclient, Keys(prefix), 60)
    assert store.complete([Completed(a, "q", RESULT, {"mask": b"m"}, 0.1, 0.2)], artifacts, token="t") == [True]
    assert store.fail(b, "q", "internal_error", "boom") is True
    assert store.fail(b, "q", "internal_error", "again") is False  # no second final event
    events = [m["data"].decode() for m in iter(lambda: ps.get_message(timeout=1), None)]
    ps.close()
    assert [e.partition(" ")[0] for e in events] == ["succeeded", "failed"]
    got = [JobRecord.from_event(e) for e in events]
    assert got == [store.get(a), store.get(b)]
    assert got[0].result == RESULT and got[0].owner == "key1" and got[1].error.message == "boom"
    assert all(JobRecord.from_event(m) is None for m in ("inference", "changed", "moved", "succeeded"))


def test_an_interrupted_token_takes_back_its_unfinished_jobs(store):
    a, b = "a" * 32, "b" * 32
    store.create(a, SPEC, "q", b"img")
    store.create(b, SPEC, "q", b"img")
    assert store.claim("q", "t", "w1", max_jobs=2) == [a, b]
    store.succeed(a, "q", RESULT)
    # the worker dies here; the message comes back and its task runs again
    assert store.reclaim("t", "w2") == [b]
    rec = store.get(b)
    assert rec.deliveries == 2 and rec.worker == "w2" and rec.status is JobStatus.running
    assert store.claim("q", "other", "w3") == []  # nobody else takes it meanwhile
    store.release("t")
    assert store.claimed("t") == []


def test_a_take_can_bring_back_records_and_uploads_in_the_same_call(store, rclient, prefix):
    """What the worker then needs to run the jobs: the same as load_for_run reads, with no second round trip."""
    a, b, c = "a" * 32, "b" * 32, "c" * 32
    for j in (a, b, c):
        store.create(j, SPEC, "q", f"img-{j[0]}".encode())
    rclient.delete(Keys(prefix).upload(b))  # expired between submission and run
    taken = store.take("q", "t", "w1", max_jobs=2, load=True)
    assert not taken.reclaimed and taken.job_ids == [a, b]
    assert taken.loaded == dict(zip([a, b], store.load_for_run([a, b]), strict=True))
    rec, data = taken.loaded[a]
    assert rec.status is JobStatus.running and rec.worker == "w1" and rec.deliveries == 1 and data == b"img-a"
    assert taken.loaded[b][0].id == b and taken.loaded[b][1] is None
    assert store.take("q", "t2", "w1", load=False).loaded == {}
    again = store.take("q", "t", "w2", load=True)  # the token came back after a crash: b is taken back, reloaded
    assert again.reclaimed and sorted(again.job_ids) == [a, b]  # a set: any order
    assert again.loaded[a][0].deliveries == 2
    assert store.take("q", "t3", "w1", load=True).job_ids == []


def test_the_hinted_upload_comes_with_the_claim_and_others_are_read_after(store, monkeypatch):
    a, b = "a" * 32, "b" * 32
    for j in (a, b):
        store.create(j, SPEC, "q", f"img-{j[0]}".encode())
    reads = []
    mget = store.r.mget
    monkeypatch.setattr(store.r, "mget", lambda keys: reads.append(keys) or mget(keys))
    taken = store.take("q", "t1", "w", load=True, hint=a)  # the message's own job is the head: one round trip
    assert taken.job_ids == [a] and taken.loaded[a][1] == b"img-a" and reads == []
    taken = store.take("q", "t2", "w", load=True, hint="c" * 32)  # a stale hint costs one more read, nothing else
    assert taken.job_ids == [b] and taken.loaded[b][1] == b"img-b" and len(reads) == 1


def test_a_take_says_whether_a_message_waits_on_the_other_queues_it_names(store, rclient):
    store.create("a" * 32, SPEC, "q", b"img")
    assert store.take("q", "t1", "w", others=("q2", "q3")).others_waiting is False
    rclient.rpush("q3", b"message")
    store.create("b" * 32, SPEC, "q", b"img")
    taken = store.take("q", "t2", "w", load=True, hint="b" * 32, others=("q2", "q3"))
    assert taken.others_waiting is True and taken.job_ids == ["b" * 32] and taken.loaded["b" * 32][1] == b"img"
    assert store.take("q", "t3", "w").others_waiting is False  # none named, none looked at
    store.create("c" * 32, SPEC, "q", b"img")
    taken = store.take("q", "t4", "w", mode="claim", others=("q2", "q3"), yield_to_others=True)
    assert taken.others_waiting is True and taken.job_ids == []  # a claim that yields takes nothing
    assert store.get("c" * 32).status is JobStatus.queued and store.claimed("t4") == []
    rclient.delete("q3")
    assert store.take("q", "t4", "w", mode="claim", others=("q2", "q3"), yield_to_others=True).job_ids == ["c" * 32]


def test_unknown_job_is_none_and_expired_entries_leave_the_order(store, rclient, prefix):
    assert store.get("c" * 32) is None
    store.create("d" * 32, SPEC, "q", b"img")
    rclient.delete(Keys(prefix).job("d" * 32))  # the record expired
    assert store.claim("q", "t", "w") == []
    assert store.queue_depth("q") == 0


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


def test_queue_bound_is_atomic_and_reports_the_depth(store):
    for i in range(3):
        assert not store.create(f"{i:032x}", SPEC, "q", b"i", max_depth=3).full
    refused = store.create("f" * 32, SPEC, "q", b"i", max_depth=3)
    assert refused.full and refused.position == 3 and store.get("f" * 32) is None


def test_the_celery_message_is_pushed_with_the_record_or_not_at_all(store, rclient, prefix):
    queue = f"{prefix}.jobs.shapes"  # the broker list is the queue's own key
    assert not store.create("1" * 32, SPEC, queue, b"i", max_depth=1, message=b"m1").full
    assert rclient.lrange(queue, 0, -1) == [b"m1"]
    assert store.create("2" * 32, SPEC, queue, b"i", max_depth=1, message=b"m2").full
    kw = {"idempotency_key": "k", "idempotency_ttl_s": 60}
    store.create("3" * 32, SPEC, f"{queue}2", b"i", message=b"m3", **kw)
    assert store.create("4" * 32, SPEC, f"{queue}2", b"i", message=b"m4", **kw).replayed
    assert rclient.lrange(queue, 0, -1) == [b"m1"] and rclient.lrange(f"{queue}2", 0, -1) == [b"m3"]


def test_idempotency_key_replays_the_first_job_and_checks_the_request(store):
    first = store.create("1" * 32, SPEC, "q", b"i", idempotency_key="k", idempotency_ttl_s=60, fingerprint="fp1")
    again = store.create("2" * 32, SPEC, "q", b"i", idempotency_key="k", idempotency_ttl_s=60, fingerprint="fp1")
    assert again.replayed and again.job_id == first.job_id == "1" * 32 and again.fingerprint_matches
    assert store.get("2" * 32) is None  # nothing new was created
    other = store.create("3" * 32, SPEC, "q", b"i", idempotency_key="k", idempotency_ttl_s=60, fingerprint="fp2")
    assert other.replayed and not other.fingerprint_matches
    scoped = store.create("4" * 32, SPEC, "q", b"i", owner="keyB", idempotency_key="k", idempotency_ttl_s=60)
    assert not scoped.replayed  # idempotency keys are per API key


def test_a_refusal_carries_the_queue_drain_rate_from_the_same_round_trip(store, rclient):
    """A full queue's refusal needs its Retry-After, from the jobs finished in the last minute:
    the create script returns them, so a refusal is one round trip, not two."""
    full = store.create("f" * 32, SPEC, "q", b"i", max_depth=1, owner="a")
    assert full.position == 0  # the queue's one place taken
    refused = store.create("e" * 32, SPEC, "q", b"i", max_depth=1)
    assert refused.full and refused.drain_per_s == 0.0  # nothing finished yet
    assert store.get("e" * 32) is None and rclient.get(store.keys.upload("e" * 32)) is None
    for i in range(4):
        store.create(f"{i:032x}", SPEC, "q", b"i")
    store.claim("q", "t", "w", max_jobs=5)
    for i in range(4):
        store.succeed(f"{i:032x}", "q", RESULT)
    store.create("d" * 32, SPEC, "q", b"i")  # the queue holds one job again
    refused = store.create("c" * 32, SPEC, "q", b"i", max_depth=1)
    assert refused.full and refused.position == 1
    assert refused.drain_per_s == 4.0  # four in (at least) one second
    old = rclient.zrange(store.keys.completions("q"), 0, 0, withscores=True)[0]
    rclient.zadd(store.keys.completions("q"), {old[0]: old[1] - 120})  # finished before the window
    assert store.create("b" * 32, SPEC, "q", b"i", max_depth=1).drain_per_s == 3.0
    rec = store.get("d" * 32)  # the record's fields after the window's argument, each in its place
    assert rec.status is JobStatus.queued and rec.spec == SPEC and rec.queue == "q" and rec.deliveries == 0
    fields = {k.decode() for k in rclient.hkeys(store.keys.job("d" * 32))}
    assert fields == {"seq", "id", "status", "spec", "method", "queue", "owner", "created_at", "deliveries"}


def test_cancel_a_queued_job_removes_it_from_the_order(store):
    store.create("a" * 32, SPEC, "q", b"i")
    assert store.cancel("a" * 32, "q") == "cancelled"
    assert store.claim("q", "t", "w") == [] and store.get("a" * 32).status is JobStatus.cancelled
    assert store.cancel("a" * 32, "q") == "cancelled"  # already final: reported, not changed
    store.create("b" * 32, SPEC, "q", b"i")
    store.claim("q", "t", "w")
    assert store.cancel("b" * 32, "q") == "cancelling"
    reports = store.stage_reports()
    assert reports.report(["b" * 32], "cam") == [] and reports.close() == ["b" * 32]  # the flag comes back


def test_stage_reports_do_not_wait_and_hand_the_flags_back_one_report_later(store, rclient, prefix):
    a, b = "a" * 32, "b" * 32
    for j in (a, b):
        store.create(j, SPEC, "q", b"i")
    store.claim("q", "t", "w", max_jobs=2)
    ps = rclient.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(Keys(prefix).job_events(a))
    assert ps.parse_response(timeout=5)[0] == b"subscribe"
    pool = rclient.connection_pool
    reports = store.stage_reports()
    assert reports.report([a, b], "inference") == []
    assert reports.sent == [a, b]  # written; replies not read yet
    store.cancel(b, "q")  # after the "inference" report was written
    assert reports.report([a, b], "cam") == []  # the flags read now are as of "inference"
    assert store.get(a).stage == store.get(b).stage == "cam"
    assert reports.report([a, b], "encode") == [b]  # b's flag, seen with the "cam" report
    assert reports.close() == []
    assert store.get(a).stage == "encode" and store.get(b).stage == "cam"  # b got no new stage
    assert [m["data"] for m in iter(lambda: ps.get_message(timeout=1), None)] == [b"inference", b"cam", b"encode"]
    ps.close()
    assert reports.conn is None and len(pool._in_use_connections) == 0  # the connection went back


def test_stage_reports_drop_a_connection_that_failed_mid_reply(store, monkeypatch):
    store.create("a" * 32, SPEC, "q", b"i")
    store.claim("q", "t", "w")
    reports = store.stage_reports()
    reports.report(["a" * 32], "inference")
    conn = reports.conn
    monkeypatch.setattr(conn, "read_response", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("gone")))
    with pytest.raises(ConnectionError):
        reports.report(["a" * 32], "cam")
    assert reports.conn is None and reports.sent == [] and conn._sock is None  # not reused with stray replies
    monkeypatch.undo()  # the pool may hand the same (reconnected) object out again
    assert reports.report(["a" * 32], "encode") == [] and reports.close() == []  # a fresh connection works


def test_completing_one_batch_keeps_the_claims_of_the_next(store, rclient, prefix):
    """A worker that finishes batch N while it runs batch N+1 under the same token must not end
    N+1's claims: if it dies now, the token takes N+1's jobs back."""
    a, b, c = "a" * 32, "b" * 32, "c" * 32
    for j in (a, b, c):
        store.create(j, SPEC, "q", b"img")
    assert store.claim("q", "t", "w1", max_jobs=1) == [a]
    assert store.claim("q", "t", "w1", max_jobs=2) == [b, c]
    artifacts = ArtifactStore(rclient, Keys(prefix), 60)
    assert store.complete([Completed(a, "q", RESULT, {}, 0.1, 0.2)], artifacts, token="t", claims=[a]) == [True]
    assert sorted(store.claimed("t")) == [b, c]
    assert sorted(store.reclaim("t", "w2")) == [b, c]
    assert store.complete([], artifacts, token="t", claims=[b, c]) == []
    assert store.claimed("t") == []


def _message(job_id: str, queue: str, model: str) -> bytes:
    return f"token for {job_id} on {queue} ({model})".encode()


def test_a_job_running_past_the_cutoff_goes_back_to_its_place_with_a_new_message(store):
    """The orphan sweep (worker/orphans.py): a claim no message will take back is undone, the
    job keeps its place in line, and the old token no longer owns it."""
    first, second = "a" * 32, "b" * 32
    q = store.keys.celery_queue("shapes")  # the broker list, under the test's prefix
    store.create(first, SPEC, q, b"img")
    store.create(second, SPEC, q, b"img")
    assert store.claim(q, "tok1", "w1") == [first]
    k = store.keys
    assert store.r.zscore(k.running(), first) is not None
    assert store.requeue_orphans(60, _message) == []  # claimed just now: its run may be live
    assert store.get(first).status is JobStatus.running

    assert store.requeue_orphans(-1, _message) == [first]  # a cutoff past its claim
    rec = store.get(first)
    assert rec.status is JobStatus.queued and rec.position == 0  # ahead of the job queued after it
    assert (rec.worker, rec.token, rec.started_at, rec.stage, rec.deliveries) == (None, None, None, None, 1)
    assert store.r.lrange(q, 0, -1) == [_message(first, q, "shapes")]
    assert store.r.zscore(k.running(), first) is None and store.claimed("tok1") == []
    assert store.r.hget(k.metrics(), "jobs|requeued|shapes") == b"1"

    assert store.claim(q, "tok2", "w2") == [first]
    assert store.get(first).deliveries == 2  # the next run counts toward max_deliveries
    assert store.reclaim("tok1", "w1") == []  # the old token, should it run, finds nothing of its own


def test_the_sweep_drops_the_entries_of_finished_and_expired_jobs_and_pushes_nothing(store):
    done, gone = "c" * 32, "d" * 32
    q = store.keys.celery_queue("shapes")
    for j in (done, gone):
        store.create(j, SPEC, q, b"img")
    assert store.claim(q, "tok", "w", max_jobs=2) == [done, gone]
    k = store.keys
    assert store.succeed(done, q, RESULT)
    assert store.r.zscore(k.running(), done) is None  # a final state leaves the index at once
    store.r.delete(k.job(gone))  # its record expired
    assert store.requeue_orphans(-1, _message) == []
    assert store.r.zcard(k.running()) == 0 and store.r.llen(q) == 0


def test_an_orphan_whose_cancellation_was_requested_ends_cancelled_instead(store):
    job_id = "f" * 32
    q = store.keys.celery_queue("shapes")
    store.create(job_id, SPEC, q, b"img")
    assert store.claim(q, "tok", "w1") == [job_id]
    assert store.cancel(job_id, q) == "cancelling"
    assert store.requeue_orphans(-1, _message) == []
    rec = store.get(job_id)
    assert rec.status is JobStatus.cancelled and rec.error.code == "cancelled"
    assert store.r.llen(q) == 0 and store.r.zscore(store.keys.running(), job_id) is None


def test_a_job_claimed_again_while_the_sweep_decides_stays_with_its_new_claim(store):
    """The sweep reads, then acts in one script that checks the claim's time again: a
    redelivered token that took the job back in between keeps it."""
    job_id = "e" * 32
    q = store.keys.celery_queue("shapes")
    store.create(job_id, SPEC, q, b"img")
    assert store.claim(q, "tok", "w1") == [job_id]
    time.sleep(0.1)

    def taken_back_meanwhile(j: str, queue: str, model: str) -> bytes:
        assert store.reclaim("tok", "w2") == [job_id]  # restamps its claim
        return _message(j, queue, model)

    assert store.requeue_orphans(0.05, taken_back_meanwhile) == []
    rec = store.get(job_id)
    assert rec.status is JobStatus.running and rec.worker == "w2" and rec.deliveries == 2
    assert store.claimed("tok") == [job_id] and store.r.llen(q) == 0
    assert store.r.zscore(store.keys.running(), job_id) is not None


def test_orphans_wait_for_celerys_own_redelivery():
    with pytest.raises(ValidationError, match="orphan_after_s"):
        Settings(visibility_timeout_s=600, orphan_after_s=600)


def test_queued_jobs_whose_messages_were_lost_get_new_ones_and_no_more(store, prefix):
    q = store.keys.celery_queue("shapes")
    ids = [f"{i:032x}" for i in range(3)]
    for j in ids:
        store.create(j, SPEC, q, b"img", message=b"token " + j.encode())
    unacked = f"{prefix}:unacked"  # kombu's hash, under the test's prefix
    assert store.top_up_tokens(q, _message, unacked) == 0  # one message each
    taken = store.r.rpop(q)  # a worker's BRPOP takes the oldest...
    store.r.hset(unacked, "tag1", json.dumps([taken.decode(), "", q]))  # ...and records it unacknowledged
    assert store.top_up_tokens(q, _message, unacked) == 0
    store.r.hdel(unacked, "tag1")  # killed between the two: the message is gone
    assert store.top_up_tokens(q, _message, unacked) == 1
    assert store.r.lrange(q, 0, 0) == [_message(ids[0], q, "shapes")]  # the head job's hint
    assert store.top_up_tokens(q, _message, unacked) == 0  # owed no more
    assert store.cancel(ids[2], q) == "cancelled"  # its message is spare now: nothing is pushed
    assert store.top_up_tokens(q, _message, unacked) == 0 and store.r.llen(q) == 3
