"""The worker's job lifecycle in-process, on the real Redis and the demo model."""

from __future__ import annotations

import io
import json
import signal
import threading
import time

import numpy as np
import pytest
import redis
import torch
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.artifacts import ArtifactStore
from shared.celery_app import TASK_SEGMENT, task_message
from shared.celery_app import app as celery_app
from shared.jobs import JobStore, StageReports
from shared.keys import Keys
from shared.model_store import ModelStore
from shared.schemas import ImageInfo, JobSpec, JobStatus, Method
from tests.conftest import ROOT
from training.shapes import held_out
from worker import render
from worker.linger import QueueWatch
from worker.loader import ModelCache
from worker.pipeline import Pipeline
from worker.runner import JobRunner

QUEUE = "q"


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def parts(rclient, prefix):
    keys = Keys(prefix)
    store = ModelStore(ROOT / "models" / "store")
    jobs = JobStore(rclient, keys, 60, 60)
    arts = ArtifactStore(rclient, keys, 60)
    cache = ModelCache(store, torch.device("cpu"))

    def runner(
        batch: int = 1,
        name: str = "w",
        drain_s: float = 0.0,
        linger_ms: float = 0.0,
        queues=(),
        overlap=False,
        stopping=lambda: False,
    ) -> JobRunner:
        watch = QueueWatch(rclient, {q: keys.queue_events(q) for q in queues}) if queues else None
        return JobRunner(jobs, arts, store, cache, name, max_batch_size=batch, drain_s=drain_s, linger_ms=linger_ms,
                         watch=watch, overlap=overlap, stopping=stopping)  # fmt: skip

    def submit(job_id: str, image, method=Method.gradcam, target=None, queue: str = QUEUE) -> None:
        spec = JobSpec(
            model="shapes", model_version="1", method=method, target_class=target,
            image=ImageInfo(format="PNG", width=image.width, height=image.height, bytes=1),
        )  # fmt: skip
        message = task_message(celery_app, TASK_SEGMENT, job_id, queue, {"model": "shapes", "job_id": job_id})
        jobs.create(job_id, spec, queue, png(image), message=message)

    return jobs, arts, runner, submit


def test_a_batch_runs_as_one_pass_and_equals_single_runs(parts):
    jobs, arts, runner, submit = parts
    scenes = held_out(4)
    for i, s in enumerate(scenes):
        submit(f"{i:032x}", s.image)
    out = runner(batch=8).run_token("tok", QUEUE)
    assert out == {f"{i:032x}": "succeeded" for i in range(4)}
    batched = [jobs.get(f"{i:032x}") for i in range(4)]
    assert all(r.result.batch_size == 4 for r in batched)
    for i, s in enumerate(scenes):
        submit(f"{i + 10:032x}", s.image)
        runner(batch=1).run_token(f"single{i}", QUEUE)
        single = jobs.get(f"{i + 10:032x}")
        assert single.result.batch_size == 1
        # Same masks and explanation; floats equal up to the batch's summation order (~1e-6).
        a, b = single.result, batched[i].result
        assert [(c.id, c.pixel_fraction) for c in a.classes] == [(c.id, c.pixel_fraction) for c in b.classes]
        for cs, cb in zip(a.classes, b.classes, strict=True):
            assert cs.mean_confidence == pytest.approx(cb.mean_confidence, abs=1e-5)
        e1, e2 = a.explanation, b.explanation
        assert (e1.class_id, e1.method, e1.empty) == (e2.class_id, e2.method, e2.empty)
        assert e1.energy_in_mask == pytest.approx(e2.energy_in_mask, abs=1e-3)
        assert arts.get(f"{i + 10:032x}", "mask") == arts.get(f"{i:032x}", "mask")
        h1, h2 = (np.asarray(Image.open(io.BytesIO(arts.get(f"{j:032x}", "heatmap"))), dtype=int) for j in (i + 10, i))
        assert np.abs(h1 - h2).max() <= 1  # 8-bit heatmap: at most one rounding step apart


def test_the_runner_reads_records_and_uploads_with_its_claim(parts, monkeypatch):
    """One round trip from message to compute: the claim brings the jobs' data back, nothing is read after it."""
    jobs, _arts, runner, submit = parts
    for i, s in enumerate(held_out(3)):
        submit(f"{i:032x}", s.image)
    reads = []
    real = jobs.load_for_run
    monkeypatch.setattr(jobs, "load_for_run", lambda ids: reads.append(ids) or real(ids))
    out = runner(batch=2, drain_s=60).run_token("tok", QUEUE)
    assert out == {f"{i:032x}": "succeeded" for i in range(3)} and reads == []


def test_one_bad_job_in_a_batch_fails_alone(parts, rclient, prefix):
    jobs, _arts, runner, submit = parts
    scenes = held_out(3)
    for i, s in enumerate(scenes):
        submit(f"{i:032x}", s.image)
    rclient.set(Keys(prefix).upload(f"{1:032x}"), b"\x89PNG\r\n\x1a\n broken")  # corrupted after acceptance
    out = runner(batch=8).run_token("tok", QUEUE)
    assert out[f"{1:032x}"] == "failed" and out[f"{0:032x}"] == out[f"{2:032x}"] == "succeeded"
    err = jobs.get(f"{1:032x}").error
    assert err.code == "corrupt_image" and err.message


def test_an_interrupted_token_runs_its_unfinished_jobs_again(parts):
    jobs, _arts, runner, submit = parts
    s = held_out(1)[0]
    submit("a" * 32, s.image)
    assert jobs.claim(QUEUE, "tok", "dead-worker") == ["a" * 32]  # claimed, then the worker died
    out = runner(name="w2").run_token("tok", QUEUE)
    assert out == {"a" * 32: "succeeded"}
    rec = jobs.get("a" * 32)
    assert rec.status is JobStatus.succeeded and rec.deliveries == 2 and rec.worker == "w2"
    assert runner().run_token("tok", QUEUE) == {}  # a second redelivery finds nothing to do


def test_expired_upload_fails_the_job_with_a_reason(parts, rclient, prefix):
    jobs, _arts, runner, submit = parts
    submit("e" * 32, held_out(1)[0].image)
    rclient.delete(Keys(prefix).upload("e" * 32))
    assert runner().run_token("tok", QUEUE) == {"e" * 32: "failed"}
    assert jobs.get("e" * 32).error.code == "upload_missing"


def test_adaptive_batching_waits_at_most_max_wait_for_company(parts):
    jobs, _arts, runner, submit = parts
    scenes = held_out(4)
    submit("a" * 32, scenes[0].image)
    r = JobRunner(jobs, _arts, runner().store, runner().cache, "w", max_batch_size=4, max_wait_ms=300)

    def late_arrivals():
        time.sleep(0.08)
        submit("b" * 32, scenes[1].image)
        submit("c" * 32, scenes[2].image, method=Method.hirescam)  # another method: not in this batch

    t = threading.Thread(target=late_arrivals)
    t0 = time.monotonic()
    t.start()
    out = r.run_token("tok", QUEUE)
    t.join()
    assert out == {"a" * 32: "succeeded", "b" * 32: "succeeded"}
    assert jobs.get("a" * 32).result.batch_size == 2
    assert jobs.get("c" * 32).status is JobStatus.queued  # left for the next token
    assert time.monotonic() - t0 < 0.3 + 2.0  # never held past max_wait (plus the compute)


def test_a_lone_job_is_held_no_longer_than_max_wait(parts):
    jobs, _arts, runner, submit = parts
    submit("d" * 32, held_out(1)[0].image)
    r = JobRunner(jobs, _arts, runner().store, runner().cache, "w", max_batch_size=8, max_wait_ms=50)
    assert r.run_token("tok", QUEUE) == {"d" * 32: "succeeded"}
    result = jobs.get("d" * 32).result
    assert result.batch_size == 1
    assert 45 <= result.timings_ms.queue_wait_ms <= 50 + 100  # it waited for company, and not past max_wait


def test_cancelling_one_job_of_a_batch_leaves_the_others(parts, rclient, prefix, monkeypatch):
    jobs, _arts, runner, submit = parts
    scenes = held_out(3)
    for i, s in enumerate(scenes):
        submit(f"{i:032x}", s.image)
    r = runner(batch=8)
    real_report = StageReports.report

    def cancel_during_inference(self, ids, stage):
        if stage == "inference":
            jobs.cancel(f"{1:032x}", QUEUE)  # the client's DELETE arrives mid-batch
        return real_report(self, ids, stage)

    monkeypatch.setattr(StageReports, "report", cancel_during_inference)
    out = r.run_token("tok", QUEUE)
    assert out == {f"{0:032x}": "succeeded", f"{1:032x}": "cancelled", f"{2:032x}": "succeeded"}
    assert jobs.get(f"{1:032x}").status is JobStatus.cancelled
    assert jobs.get(f"{0:032x}").result.batch_size == 3


def test_a_cancel_seen_only_after_the_last_stage_drops_the_result(parts, monkeypatch):
    """The flags of the last stage report are read when the pipeline ends: a job cancelled
    then ends cancelled, its result dropped, not succeeded."""
    jobs, _arts, runner, submit = parts
    submit("e" * 32, held_out(1)[0].image)
    real_report = StageReports.report

    def cancel_at_encode(self, ids, stage):
        if stage == "encode":
            jobs.cancel("e" * 32, QUEUE)
        return real_report(self, ids, stage)

    monkeypatch.setattr(StageReports, "report", cancel_at_encode)
    assert runner().run_token("tok", QUEUE) == {"e" * 32: "cancelled"}
    rec = jobs.get("e" * 32)
    assert rec.status is JobStatus.cancelled and rec.result is None and jobs.claimed("tok") == []


def test_a_busy_token_runs_the_queued_jobs_and_takes_their_spare_messages(parts, rclient, prefix):
    jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"  # the broker list: one message per submitted job
    for i, s in enumerate(held_out(5)):
        submit(f"{i:032x}", s.image, queue=queue)
    rclient.rpop(queue)  # Celery delivered the first job's message: that is the running token
    out = runner(drain_s=60).run_token("tok", queue)
    assert out == {f"{i:032x}": "succeeded" for i in range(5)}  # back to back, in queue order
    assert rclient.llen(queue) == 0  # the four spare messages were taken off, none left to run empty
    assert jobs.claimed("tok") == []  # and nothing is left claimed under the token


@pytest.mark.parametrize("overlap", [False, True])
def test_a_draining_token_hands_the_worker_back_when_another_of_its_queues_has_a_job(parts, rclient, prefix, overlap):
    """Another model's job waits one batch at most, not the rest of the drain (with the lane too:
    no batch is claimed ahead once a take has seen it)."""
    jobs, _arts, runner, submit = parts
    qa, qb = f"{prefix}.jobs.shapes", f"{prefix}.jobs.other"
    scenes = held_out(5)
    for i, s in enumerate(scenes[:4]):
        submit(f"{i:032x}", s.image, queue=qa)
    rclient.rpop(qa)  # the running token's own message
    out = runner(drain_s=60, queues=[qa, qb], overlap=overlap).run_token("tok", qa)
    assert out == {f"{i:032x}": "succeeded" for i in range(4)}  # nothing waits elsewhere: the whole backlog
    for i, s in enumerate(scenes[:3]):
        submit(f"{10 + i:032x}", s.image, queue=qa)
    rclient.rpop(qa)
    submit(f"{20:032x}", scenes[4].image, queue=qb)
    out = runner(drain_s=60, queues=[qa, qb], overlap=overlap).run_token("tok2", qa)
    # its own job, then the one claimed with the news that qb has a message; then it ends
    assert out == {f"{10:032x}": "succeeded", f"{11:032x}": "succeeded"}
    assert jobs.get(f"{12:032x}").status is JobStatus.queued and rclient.llen(qa) == 1  # with its message
    assert jobs.get(f"{20:032x}").status is JobStatus.queued and rclient.llen(qb) == 1
    assert jobs.claimed("tok2") == []


def test_without_draining_a_token_runs_its_own_job_only(parts, rclient, prefix):
    jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    for i, s in enumerate(held_out(3)):
        submit(f"{i:032x}", s.image, queue=queue)
    rclient.rpop(queue)
    assert runner(drain_s=0).run_token("tok", queue) == {f"{0:032x}": "succeeded"}
    assert rclient.llen(queue) == 2 and jobs.get(f"{1:032x}").status.value == "queued"  # each keeps its message


def test_a_batch_takes_the_spare_messages_of_the_jobs_it_joined(parts, rclient, prefix):
    _jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    for i, s in enumerate(held_out(4)):
        submit(f"{i:032x}", s.image, queue=queue)
    rclient.rpop(queue)
    out = runner(batch=4).run_token("tok", queue)
    assert set(out.values()) == {"succeeded"} and len(out) == 4
    assert rclient.llen(queue) == 0


def test_a_token_with_claims_to_take_back_is_never_taken_off(parts, rclient, prefix):
    jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    for i, s in enumerate(held_out(3)):
        submit(f"{i:032x}", s.image, queue=queue)
    crashed = rclient.rpop(queue)  # job 0's token was delivered, claimed job 0 ...
    assert jobs.claim(queue, f"{0:032x}", "dead-worker") == [f"{0:032x}"]
    rclient.lpush(queue, crashed)  # ... its worker died and Celery put the message back
    rclient.rpop(queue)  # job 1's token is the one running now
    out = runner(drain_s=60).run_token("tok", queue)
    assert out == {f"{1:032x}": "succeeded", f"{2:032x}": "succeeded"}
    # job 2's spare token went; the crashed token stayed, to take job 0 back
    assert [json.loads(m)["headers"]["id"] for m in rclient.lrange(queue, 0, -1)] == [f"{0:032x}"]
    assert runner().run_token(f"{0:032x}", queue) == {f"{0:032x}": "succeeded"}


@pytest.mark.parametrize("overlap", [False, True])
def test_a_draining_token_stops_claiming_once_the_worker_is_shutting_down(parts, rclient, prefix, overlap):
    """A SIGTERM mid-drain (here: as soon as the second job is claimed): the batch in hand ends
    the task, none is claimed ahead, and the rest stay queued with their messages."""
    jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    for i, s in enumerate(held_out(6)):
        submit(f"{i:032x}", s.image, queue=queue)
    rclient.rpop(queue)
    sigterm = lambda: jobs.get(f"{1:032x}").status is not JobStatus.queued  # noqa: E731
    out = runner(drain_s=60, overlap=overlap, stopping=sigterm).run_token("tok", queue)
    assert out == {f"{0:032x}": "succeeded", f"{1:032x}": "succeeded"}
    assert all(jobs.get(f"{i:032x}").status is JobStatus.queued for i in range(2, 6))
    assert rclient.llen(queue) == 4 and jobs.claimed("tok") == []


def test_draining_leaves_jobs_whose_messages_a_worker_already_took(parts, rclient, prefix):
    """Another worker took job 1's message and is about to run it: draining must not take it."""
    _jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    for i, s in enumerate(held_out(2)):
        submit(f"{i:032x}", s.image, queue=queue)
    rclient.rpop(queue)
    rclient.rpop(queue)  # both messages delivered, to two workers
    assert runner(drain_s=60).run_token("tok", queue) == {f"{0:032x}": "succeeded"}


def _after_done(jobs, job_id: str, then) -> threading.Thread:
    """Runs ``then`` 0.1 s after ``job_id`` is final, as a client submitting its next job would."""

    def go():
        deadline = time.monotonic() + 60
        while (rec := jobs.get(job_id)) is None or not rec.status.final:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)
        then()

    t = threading.Thread(target=go)
    t.start()
    return t


@pytest.mark.parametrize("overlap", [False, True])
def test_an_idle_task_lingers_and_claims_the_next_submission_itself(parts, rclient, prefix, monkeypatch, overlap):
    """At low load the finishing lane stays out of the way: each job, with none queued behind
    it, finishes on the task's thread."""
    jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    a, b = held_out(2)
    submit(f"{0:032x}", a.image, queue=queue)
    rclient.rpop(queue)  # Celery delivered job 0's message: the running token
    real_finish, threads = Pipeline.finish, []
    monkeypatch.setattr(Pipeline, "finish", lambda self, *a, **k: threads.append(threading.current_thread().name)
                        or real_finish(self, *a, **k))  # fmt: skip
    t = _after_done(jobs, f"{0:032x}", lambda: submit(f"{1:032x}", b.image, queue=queue))
    started = time.monotonic()
    out = runner(drain_s=60, linger_ms=600, queues=[queue], overlap=overlap).run_token("tok", queue)
    took = time.monotonic() - started
    t.join()
    assert out == {f"{0:032x}": "succeeded", f"{1:032x}": "succeeded"}
    assert threads == ["MainThread", "MainThread"]
    assert jobs.get(f"{1:032x}").token == "tok"  # this task ran it ...
    assert rclient.llen(queue) == 0  # ... and its message came off the list: no task runs empty for it
    assert took < 10  # then it waited linger_ms more for a third job, and ended


def test_without_lingering_the_task_ends_when_its_queue_is_empty(parts, rclient, prefix):
    jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    a, b = held_out(2)
    submit(f"{0:032x}", a.image, queue=queue)
    rclient.rpop(queue)
    t = _after_done(jobs, f"{0:032x}", lambda: submit(f"{1:032x}", b.image, queue=queue))
    out = runner(drain_s=60, linger_ms=0, queues=[queue]).run_token("tok", queue)
    t.join()
    assert out == {f"{0:032x}": "succeeded"}
    assert jobs.get(f"{1:032x}").status is JobStatus.queued and rclient.llen(queue) == 1  # for the parent


def test_a_job_for_another_queue_ends_the_wait_and_keeps_its_message(parts, rclient, prefix):
    jobs, _arts, runner, submit = parts
    qa, qb = f"{prefix}.jobs.shapes", f"{prefix}.jobs.other"
    a, b = held_out(2)
    submit(f"{0:032x}", a.image, queue=qa)
    rclient.rpop(qa)
    t = _after_done(jobs, f"{0:032x}", lambda: submit(f"{1:032x}", b.image, queue=qb))
    started = time.monotonic()
    out = runner(drain_s=60, linger_ms=30_000, queues=[qa, qb]).run_token("tok", qa)
    took = time.monotonic() - started
    t.join()
    assert out == {f"{0:032x}": "succeeded"}
    assert took < 15  # not the 30 s linger: the parent must deliver the other queue's job
    assert jobs.get(f"{1:032x}").status is JobStatus.queued and rclient.llen(qb) == 1


def test_lingering_stops_at_the_drain_limit(parts, rclient, prefix):
    _jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    submit(f"{0:032x}", held_out(1)[0].image, queue=queue)
    rclient.rpop(queue)
    r = runner(drain_s=0.5, linger_ms=30_000, queues=[queue])
    started = time.monotonic()
    assert r.run_token("tok", queue) == {f"{0:032x}": "succeeded"}
    assert time.monotonic() - started < 10
    assert not r.watch.listening  # unsubscribed: nothing piles up while the next jobs run


def test_with_the_lane_a_batch_finishes_while_the_next_one_computes(parts, rclient, prefix, monkeypatch):
    """SEGCAM_OVERLAP: batch N's CPU half and completion run on the lane's thread while this
    thread computes batch N+1; N's completion ends N's claims only, so a crash now would still
    take N+1's jobs back. Only while jobs queue back to back: the token's first batch, claimed
    with no batch before it, finishes on the task's thread (at low load a hand-off would only
    add a thread switch to its latency). Results are the same bytes as without the lane."""
    jobs, arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    ids = [f"{i:032x}" for i in range(6)]
    scenes = held_out(6)
    for jid, s in zip(ids, scenes, strict=True):
        submit(jid, s.image, queue=queue)
    rclient.rpop(queue)  # the running token's own message
    real_compute, real_finish = Pipeline.compute, Pipeline.finish
    seen: dict[str, object] = {"computes": [], "finish_threads": []}
    third_started = threading.Event()

    def compute(self, items, method, on_stage=None):
        batch = [it.job_id for it in items]
        seen["computes"].append(batch)
        if len(seen["computes"]) == 3:
            third_started.set()
        if len(seen["computes"]) == 3:  # batch 2 is in the lane: once it is stored, only batch 3 is claimed
            end = time.monotonic() + 10
            while not jobs.get(ids[3]).status.final and time.monotonic() < end:
                time.sleep(0.01)
            seen["claims_after_batch_2"] = sorted(jobs.claimed("tok"))
        return real_compute(self, items, method, on_stage)

    def finish(self, computed, on_stage=None):
        seen["finish_threads"].append(threading.current_thread().name.split("_")[0])
        if len(seen["finish_threads"]) == 2:  # batch 2, in the lane, waits here until batch 3 computes
            seen["overlapped"] = third_started.wait(10)
        return real_finish(self, computed, on_stage)

    monkeypatch.setattr(Pipeline, "compute", compute)
    monkeypatch.setattr(Pipeline, "finish", finish)
    out = runner(batch=2, drain_s=60, overlap=True).run_token("tok", queue)
    assert out == dict.fromkeys(ids, "succeeded")
    assert seen["computes"] == [ids[0:2], ids[2:4], ids[4:6]]
    assert seen["overlapped"] is True and seen["finish_threads"] == ["MainThread", "finish", "finish"]
    assert seen["claims_after_batch_2"] == ids[4:6]
    assert jobs.claimed("tok") == [] and rclient.llen(queue) == 0
    monkeypatch.undo()
    for jid, s in zip(ids, scenes, strict=True):  # the same jobs again, without the lane
        submit("f" + jid[1:], s.image)
    assert set(runner(batch=2, drain_s=60).run_token("tok2", QUEUE).values()) == {"succeeded"}
    for jid in ids:
        for name in ("mask", "heatmap", "overlay"):
            assert arts.get(jid, name) == arts.get("f" + jid[1:], name)
        assert jobs.get(jid).result.classes == jobs.get("f" + jid[1:]).result.classes


def test_with_the_lane_the_next_batch_is_claimed_while_this_one_computes(parts, rclient, prefix, monkeypatch):
    """While jobs queue back to back, batch N+1's claim (its uploads with it) is made on the lane's
    "take" thread while batch N computes, not after it. A batch claimed ahead is this token's to
    run even when the drain's time runs out meanwhile: the task ends after it, with nothing left
    claimed, and the jobs behind it keep their messages for the next task."""
    jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    ids = [f"{i:032x}" for i in range(8)]
    for jid, s in zip(ids, held_out(8), strict=True):
        submit(jid, s.image, queue=queue)
    rclient.rpop(queue)  # the running token's own message
    drain_s, called = 5.0, time.monotonic()
    real_compute, real_take = Pipeline.compute, jobs.take
    seen: dict[str, list] = {"computes": [], "take_threads": [], "claimed_while_computing": []}

    def take(*a, **k):
        seen["take_threads"].append(threading.current_thread().name.split("_")[0])
        return real_take(*a, **k)

    def compute(self, items, method, on_stage=None):
        seen["computes"].append([it.job_id for it in items])
        if len(seen["computes"]) == 2:  # batch 3 is claimed meanwhile, then the drain's time runs out
            end = time.monotonic() + 10
            while not set(ids[4:6]) <= set(jobs.claimed("tok")) and time.monotonic() < end:
                time.sleep(0.01)
            seen["claimed_while_computing"] = sorted(jobs.claimed("tok"))
            time.sleep(max(0.0, called + drain_s + 0.3 - time.monotonic()))
        return real_compute(self, items, method, on_stage)

    monkeypatch.setattr(jobs, "take", take)
    monkeypatch.setattr(Pipeline, "compute", compute)
    out = runner(batch=2, drain_s=drain_s, overlap=True).run_token("tok", queue)
    assert out == dict.fromkeys(ids[:6], "succeeded")
    assert seen["computes"] == [ids[0:2], ids[2:4], ids[4:6]]
    assert seen["claimed_while_computing"] == ids[2:6]  # batch 2's own claims and batch 3's
    # the token's own take and the one after its first batch (claimed with nothing before it)
    # on the task's thread; batch 3's on the lane's, while batch 2 computed; none after the drain
    assert seen["take_threads"] == ["MainThread", "MainThread", "take"]
    assert jobs.claimed("tok") == []
    assert [jobs.get(j).status for j in ids[6:]] == [JobStatus.queued] * 2 and rclient.llen(queue) == 2


def test_a_claim_made_ahead_takes_nothing_once_another_of_the_queues_has_a_job(parts, rclient, prefix, monkeypatch):
    """The claim made while a batch computes yields to another model's waiting job: the task ends
    after the batch in hand, so that job waits no longer than without the lane."""
    jobs, _arts, runner, submit = parts
    qa, qb = f"{prefix}.jobs.shapes", f"{prefix}.jobs.other"
    ids = [f"{i:032x}" for i in range(5)]
    for jid, s in zip(ids, held_out(5), strict=True):
        submit(jid, s.image, queue=qa)
    rclient.rpop(qa)  # the running token's own message
    real_take, threads = jobs.take, []

    def take(*a, **k):  # qb's job comes just before the claim made ahead looks
        threads.append(threading.current_thread().name.split("_")[0])
        if threads[-1] == "take" and not rclient.llen(qb):
            submit(f"{20:032x}", held_out(1)[0].image, queue=qb)
        return real_take(*a, **k)

    monkeypatch.setattr(jobs, "take", take)
    out = runner(drain_s=60, queues=[qa, qb], overlap=True).run_token("tok", qa)
    assert out == dict.fromkeys(ids[:2], "succeeded")  # the batch in hand when qb's job came, then the end
    assert threads == ["MainThread", "MainThread", "take"]
    assert [jobs.get(j).status for j in ids[2:]] == [JobStatus.queued] * 3 and rclient.llen(qa) == 3
    assert jobs.claimed("tok") == [] and rclient.llen(qb) == 1


@pytest.mark.parametrize("overlap", [False, True])
def test_a_job_that_breaks_while_finishing_fails_alone_without_a_second_pass(parts, monkeypatch, overlap):
    """The others are finished one by one from the batch's own outputs: a forward pass on the
    lane's thread would share the model's CAM hooks with the task's next batch."""
    jobs, _arts, runner, submit = parts
    scenes = held_out(3)
    odd = scenes[1].image.resize((123, 77))  # the encoder breaks on this image only
    for i, image in enumerate([scenes[0].image, odd, scenes[2].image]):
        submit(f"{i:032x}", image)
    real = render.overlay_image

    def breaks_on_the_odd_one(image, heat, *a):
        if image.size == (123, 77):
            raise RuntimeError("encoder broke")
        return real(image, heat, *a)

    real_compute, computed = Pipeline.compute, []
    monkeypatch.setattr(render, "overlay_image", breaks_on_the_odd_one)
    monkeypatch.setattr(Pipeline, "compute", lambda self, items, *a, **k: computed.append(len(items)) or
                        real_compute(self, items, *a, **k))  # fmt: skip
    out = runner(batch=8, overlap=overlap).run_token("tok", QUEUE)
    assert out == {f"{0:032x}": "succeeded", f"{1:032x}": "failed", f"{2:032x}": "succeeded"}
    err = jobs.get(f"{1:032x}").error
    assert err.code == "internal_error" and "encoder broke" in err.message
    assert computed == [3]  # one pass for the three
    assert jobs.get(f"{0:032x}").result.batch_size == 3
    assert jobs.claimed("tok") == []


def test_the_time_limit_reached_while_the_lane_is_stuck_fails_its_jobs(parts, rclient, prefix, monkeypatch):
    """Celery's soft time limit is a signal, handled on the task's thread, never the lane's: the
    task's thread, waiting for the lane, fails the lane's jobs as timed out; what the stuck
    thread stores later is dropped."""
    jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    first, second = "a" * 32, "b" * 32
    for jid, s in zip((first, second), held_out(2), strict=True):
        submit(jid, s.image, queue=queue)
    rclient.rpop(queue)
    real_finish = Pipeline.finish
    release = threading.Event()
    threads = []

    def stuck_second(self, computed, on_stage=None):
        threads.append(threading.current_thread().name.split("_")[0])
        if len(threads) == 2:  # the second job, claimed right behind the first: in the lane
            release.wait(30)
        return real_finish(self, computed, on_stage)

    def soft_limit(_signum, _frame):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(Pipeline, "finish", stuck_second)
    before = signal.signal(signal.SIGALRM, soft_limit)
    signal.setitimer(signal.ITIMER_REAL, 1.5)
    try:
        out = runner(drain_s=60, overlap=True).run_token("tok", queue)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    assert out == {first: "succeeded", second: "failed"}
    assert threads == ["MainThread", "finish"]
    assert jobs.get(second).error.code == "timeout"
    release.set()
    end = time.monotonic() + 20
    while jobs.claimed("tok") and time.monotonic() < end:  # the stuck thread finishes, its result refused
        time.sleep(0.05)
    assert jobs.claimed("tok") == []
    rec = jobs.get(second)
    assert rec.status is JobStatus.failed and rec.result is None


def test_a_failed_store_in_the_lane_does_not_strand_the_next_computed_batch(parts, rclient, prefix, monkeypatch):
    """Storing batch 2, in the lane, fails (Redis went away for a moment): the task ends with that
    error, as without the lane, but batch 3, computed meanwhile, is still stored rather than left
    running."""
    jobs, _arts, runner, submit = parts
    queue = f"{prefix}.jobs.shapes"
    ids = [f"{i:032x}" for i in range(6)]
    for jid, s in zip(ids, held_out(6), strict=True):
        submit(jid, s.image, queue=queue)
    rclient.rpop(queue)
    real, calls = jobs.complete, []

    def flaky(done, *a, **k):
        calls.append([d.job_id for d in done])
        if len(calls) == 2:
            raise redis.ConnectionError("Redis went away")
        return real(done, *a, **k)

    monkeypatch.setattr(jobs, "complete", flaky)
    with pytest.raises(redis.ConnectionError):
        runner(batch=2, drain_s=60, overlap=True).run_token("tok", queue)
    assert calls == [ids[0:2], ids[2:4], ids[4:6]]
    statuses = [JobStatus.succeeded] * 2 + [JobStatus.running] * 2 + [JobStatus.succeeded] * 2
    assert [jobs.get(j).status for j in ids] == statuses
    assert sorted(jobs.claimed("tok")) == ids[2:4]  # a redelivered token takes them back


@pytest.mark.parametrize("batch", [1, 3])
def test_a_redis_outage_in_a_stage_report_goes_up_to_the_task_and_leaves_the_claims(parts, monkeypatch, batch):
    """Not the jobs' fault: no job fails, none is finished image by image as if one had broken
    the batch; the task runs the token again (worker/tasks.py) and takes the claims back."""
    jobs, _arts, runner, submit = parts
    ids = [f"{i:032x}" for i in range(batch)]
    for jid, s in zip(ids, held_out(batch), strict=True):
        submit(jid, s.image)
    real_report, real_finish, finishes = StageReports.report, Pipeline.finish, []

    def redis_gone_at_encode(self, job_ids, stage):
        if stage == "encode":
            raise redis.ConnectionError("Connection closed by server.")
        return real_report(self, job_ids, stage)

    def finish(self, computed, on_stage=None):
        finishes.append(on_stage is not None)
        return real_finish(self, computed, on_stage)

    monkeypatch.setattr(StageReports, "report", redis_gone_at_encode)
    monkeypatch.setattr(Pipeline, "finish", finish)
    with pytest.raises(redis.ConnectionError):
        runner(batch=batch).run_token("tok", QUEUE)
    assert finishes == [True]  # the batch's own finish only
    assert sorted(jobs.claimed("tok")) == ids and {jobs.get(j).status for j in ids} == {JobStatus.running}
    monkeypatch.setattr(StageReports, "report", real_report)
    assert runner(batch=batch).run_token("tok", QUEUE) == dict.fromkeys(ids, "succeeded")  # taken back
