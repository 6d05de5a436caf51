"""A job's life on the worker: claim it, run the pipeline, store artifacts, record the outcome.

The Celery task hands the runner a token (see ``shared/jobs.py``); the runner claims the
next jobs of the token's queue, as a batch when several can share one forward pass, or
takes back what an interrupted earlier run of the same token left unfinished (those run one
at a time, so a job that kills its worker takes down only itself).

Every failure a job can meet ends in a ``failed`` record with a code and a message; the
runner never raises for a bad job, so one bad job cannot take the worker down.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from itertools import groupby

import torch
from celery.exceptions import SoftTimeLimitExceeded

from shared import webhooks
from shared.artifacts import ArtifactStore
from shared.celery_app import app as celery_app
from shared.imaging import ImageRejected
from shared.jobs import Completed, JobRecord, JobStore, Taken
from shared.logs import job_context
from shared.model_store import ModelManifest, ModelNotFound, ModelStore
from shared.redis_conn import OUTAGES
from shared.schemas import ImageSize, JobResult, ModelRef, Reproduction, Timings
from worker import faults, render
from worker.linger import QueueWatch
from worker.loader import ModelCache, ModelLoadError
from worker.pipeline import Computed, Item, ItemResult, Pipeline

log = logging.getLogger("segcam.worker")


class BatchCancelled(Exception):
    """Every job of the batch was cancelled: stop computing."""


class JobRunner:
    def __init__(
        self,
        jobs: JobStore,
        artifacts: ArtifactStore,
        store: ModelStore,
        cache: ModelCache,
        worker: str,
        max_batch_size: int = 1,
        max_deliveries: int = 3,
        fault_injection: bool = False,
        max_wait_ms: float = 0.0,
        drain_s: float = 0.0,
        linger_ms: float = 0.0,
        watch: QueueWatch | None = None,
        postprocess_threads: int = 1,
        overlay: render.Overlay = render.LOSSLESS,
        overlap: bool = False,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.jobs = jobs
        self.artifacts = artifacts
        self.store = store
        self.cache = cache
        self.worker = worker
        self.max_batch_size = max(1, max_batch_size)
        self.device_name = str(cache.device)
        self.max_deliveries = max_deliveries
        self.max_wait_s = max(0.0, max_wait_ms) / 1000
        self.fault_injection = fault_injection
        self.drain_s = max(0.0, drain_s)
        self.linger_s = max(0.0, linger_ms) / 1000 if watch is not None else 0.0
        self.watch = watch
        self.postprocess_threads = postprocess_threads
        self.overlay = overlay
        self.overlap = overlap
        self.stopping = stopping  # the worker is shutting down: claim nothing more
        self._sending = threading.Lock()  # webhooks are queued from the lane's thread too

    def run_token(self, token: str, queue: str, hint: str | None = None) -> dict[str, str]:
        """Run what the Celery task ``token`` is owed; returns job ID -> final status. ``hint``: the
        job whose submission sent the token, most likely the one it claims (its upload is read
        with the claim).

        Then, for up to ``drain_s``, the next queued jobs of the same queue, taking their spare
        messages off the broker queue (see ``shared/jobs.py``): a busy worker runs them back to
        back instead of paying a Celery hand-off per job (and, at each task boundary, a wait for the
        finishing lane and an inline finish: ``benchmarks.saturated_profile``). It stops sooner,
        after the batch in hand, once another of the worker's queues has a message. When the queue
        runs dry within that time, the task lingers up to ``linger_ms`` for the next submission
        (``worker/linger.py``)."""
        started = time.monotonic()
        taken = self.jobs.take(queue, token, self.worker, self.max_batch_size, drop_spare=True, load=True, hint=hint)
        if taken.reclaimed:  # one at a time: a job that kills its worker takes down only itself
            log.warning("token %s was interrupted; running its %d unfinished job(s) again", token, len(taken.job_ids))
            return self._round(token, [[job_id] for job_id in taken.job_ids], taken.loaded)
        outcome: dict[str, str] = {}
        lane = FinishLane(self) if self.overlap else None
        busy = False  # the batch in hand was claimed right behind the one before
        try:
            while True:
                while taken.job_ids:
                    batch = self._fill_batch(queue, token, taken)
                    # Another of the worker's queues has a job waiting: the task ends after the
                    # batch it claimed, so the parent fetches that one (one batch late at most).
                    last = time.monotonic() - started >= self.drain_s or taken.others_waiting or self.stopping()
                    # The lane only while jobs queue back to back: at low load nothing computes
                    # while a batch finishes, and a hand-off adds a thread switch to its latency.
                    # There the next batch is claimed, uploads and all, while this one computes.
                    ahead = None
                    if busy and not last and lane is not None:
                        ahead = lane.take_ahead(partial(self._backlog, queue, token, ahead=True))
                    try:
                        outcome.update(self._round(token, [batch.job_ids], batch.loaded, lane if busy else None))
                    finally:
                        # What it claimed is this token's to run, however the round ended.
                        taken = ahead.result() if ahead is not None else taken
                    if ahead is None:
                        if last or time.monotonic() - started >= self.drain_s or self.stopping():
                            return outcome
                        taken = self._backlog(queue, token)
                    busy = bool(taken.job_ids)
                if taken.others_waiting:  # no lingering for this queue while another's job waits
                    return outcome
                if lane is not None:  # the queue ran dry: the lane's batch is stored first, in order
                    outcome.update(lane.wait())
                if (heard := self._linger(queue, started)) is None:
                    return outcome
                taken = self._backlog(queue, token, hint=heard or None)
        finally:
            if lane is not None:
                outcome.update(lane.wait())  # the outcome dict returned above gets it too
            if self.watch is not None:
                self.watch.stop()

    def _backlog(self, queue: str, token: str, hint: str | None = None, ahead: bool = False) -> Taken:
        """Queued jobs whose messages no worker has taken yet (an idle worker gets its own),
        claimed for ``token`` with their messages taken off the broker list. ``ahead``: claimed
        while a batch computes, so none while another of the worker's queues has a message (the
        task ends after the batch in hand, as it would have without the claim made ahead)."""
        others = tuple(q for q in self.watch.queues if q != queue) if self.watch is not None else ()
        return self.jobs.take(
            queue, token, self.worker, self.max_batch_size, mode="claim", drop_spare=True, backlog_only=True,
            load=True, hint=hint, others=others, yield_to_others=ahead,
        )  # fmt: skip

    def _linger(self, queue: str, started: float) -> str | None:
        """The queue is empty: wait for its next job. Returns the ID of a job just queued ("" to
        look once more, right after the watch started), or None to end the task."""
        if self.linger_s <= 0 or time.monotonic() - started >= self.drain_s or self.stopping():
            return None
        if not self.watch.listening:  # a job queued before the watch started is found by looking again
            return "" if self.watch.start() else None
        return self.watch.wait(queue, min(time.monotonic() + self.linger_s, started + self.drain_s))

    def _round(
        self, token: str, batches: list[list[str]], loaded: dict | None = None, lane: FinishLane | None = None
    ) -> dict[str, str]:
        """Run the claimed ``batches`` and record the results, ending the token's claims on them.
        ``loaded``: records and uploads the claim already brought back (see ``JobStore.take``).
        With a ``lane``, the batches' CPU half and their completion run there while this thread
        goes on to the next batch; their outcomes come back with the next round's, or the lane's
        last ``wait``."""
        outcome: dict[str, str] = {}
        done: list[tuple[JobRecord, Completed]] = []
        later: list[Finish] = []
        for job_ids in batches:  # without a lane each group finishes as soon as it computed
            outcome.update(self.run_batch(job_ids, done, loaded, later if lane is not None else None))
        claims = [j for job_ids in batches for j in job_ids]
        settle = partial(self._settle, token, claims, later, done)
        if lane is None:
            outcome.update(settle())
        else:
            outcome.update(lane.hand_off(settle, [rec for f in later for rec in f.records]))
        return outcome

    def _settle(self, token: str, claims: list[str], later: list[Finish], done: list) -> dict[str, str]:
        """Finish what ``later`` holds, then store every succeeded job and end the claims."""
        outcome: dict[str, str] = {}
        for finish in later:
            outcome.update(finish())
        recorded = self.jobs.complete([c for _, c in done], self.artifacts, token=token, claims=claims)
        for (rec, _), ok in zip(done, recorded, strict=True):
            if ok:
                outcome[rec.id] = "succeeded"
                self.finished(rec)
            else:
                log.info("job %s reached a final state elsewhere; this result is dropped", rec.id)
                outcome[rec.id] = "duplicate"
        return outcome

    def _fill_batch(self, queue: str, token: str, taken: Taken) -> Taken:
        """Adaptive batching at low load: wait up to ``max_wait_ms`` (from the first claim) for more
        jobs of the same method to share the pass. Under load the batch is already full."""
        if self.max_wait_s <= 0 or len(taken.job_ids) >= self.max_batch_size:
            return taken
        job_ids, loaded = list(taken.job_ids), dict(taken.loaded)
        deadline = time.monotonic() + self.max_wait_s
        head = loaded[job_ids[0]][0]  # the claim brought the record: no read for its method
        method = head.spec.method.value if head is not None else ""
        while len(job_ids) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.002, left))
            more = self.jobs.take(
                queue, token, self.worker, self.max_batch_size - len(job_ids), mode="claim", method=method,
                drop_spare=True, load=True,
            )  # fmt: skip
            job_ids += more.job_ids
            loaded.update(more.loaded)
        return Taken(False, job_ids, loaded)

    def run_batch(
        self, job_ids: list[str], done: list, loaded: dict | None = None, later: list[Finish] | None = None
    ) -> dict[str, str]:
        """Run jobs (one batch per model, version and method); succeeded ones are appended to ``done``.
        Records and uploads not in ``loaded`` are read here. With ``later``, each batch's CPU half
        is appended there instead of run (it appends to ``done`` when it runs)."""
        with job_context(*job_ids):
            log.info("running %d job(s)", len(job_ids))
            started = time.time()
            outcome: dict[str, str] = {}
            runnable: list[tuple[JobRecord, bytes]] = []
            loaded = dict(loaded or {})
            if missing := [j for j in job_ids if j not in loaded]:
                loaded.update(zip(missing, self.jobs.load_for_run(missing), strict=True))
            for job_id in job_ids:
                rec, data = loaded[job_id]
                if rec is None:
                    log.warning("job %s has no record (expired); dropping it", job_id)
                    outcome[job_id] = "missing"
                elif rec.deliveries > self.max_deliveries:
                    msg = (f"this job's run was interrupted {rec.deliveries - 1} times (its worker died, or Redis "
                           "failed); it will not be retried")  # fmt: skip
                    outcome[job_id] = self._fail(rec, "poison_job", msg)
                elif data is None:
                    msg = "the uploaded image expired before the job ran"
                    outcome[job_id] = self._fail(rec, "upload_missing", msg)
                else:
                    runnable.append((rec, data))

            def group_key(pair: tuple[JobRecord, bytes]) -> tuple[str, str, str]:
                spec = pair[0].spec
                return spec.model, spec.model_version, spec.method.value

            for _key, group in groupby(sorted(runnable, key=group_key), key=group_key):
                if later is None:
                    outcome.update(self._run_group_now(list(group), started, done))
                else:
                    out, finish = self._run_group(list(group), started, done)
                    outcome.update(out)
                    later += [finish] if finish is not None else []
            return outcome

    def _run_group(
        self, group: list[tuple[JobRecord, bytes]], started: float, done: list
    ) -> tuple[dict[str, str], Finish | None]:
        """The group's compute half; returns the outcomes so far and, when it computed, the CPU
        half still to run (None when the group already ended: failed, cancelled)."""
        spec = group[0][0].spec
        try:
            manifest = self.store.manifest(spec.model, spec.model_version)
            model = self.cache.get(manifest)
        except (ModelNotFound, ModelLoadError, ValueError) as e:
            return {rec.id: self._fail(rec, "model_unavailable", str(e)) for rec, _ in group}, None
        items = [Item(rec.id, data, rec.spec.target_class) for rec, data in group]
        hook = StageHook(self, [rec for rec, _ in group], [data for _, data in group])
        pipeline = Pipeline(model, self.postprocess_threads, self.overlay)
        t0 = time.perf_counter()
        try:
            try:
                computed = pipeline.compute(items, spec.method, on_stage=hook)
            except BaseException:
                hook.close()
                raise
        except Exception as e:
            return self._group_failed(group, hook, e, started, done), None
        compute_s = time.perf_counter() - t0
        return dict.fromkeys(hook.cancelled, "cancelled"), Finish(
            self, group, pipeline, computed, hook, manifest, started, compute_s, done
        )

    def _run_group_now(self, group: list[tuple[JobRecord, bytes]], started: float, done: list) -> dict[str, str]:
        out, finish = self._run_group(group, started, done)
        return out if finish is None else {**out, **finish()}

    def _group_failed(self, group, hook: StageHook, e: Exception, started: float, done: list) -> dict[str, str]:
        """What a group's exception, in either half, means for its jobs. A Redis outage is not
        the jobs' fault (a stage report or a read failed): it goes up to the task, which runs
        the token again (``worker/tasks.py``)."""
        if isinstance(e, OUTAGES):
            raise e
        if isinstance(e, BatchCancelled):
            return dict.fromkeys(hook.cancelled, "cancelled")
        if isinstance(e, SoftTimeLimitExceeded):
            return {rec.id: self._fail(rec, "timeout", "the job ran past its time limit") for rec, _ in group}
        if len(group) > 1:
            # One undecodable image, a batch too big for the device's memory, or a bug that
            # one job's input triggers: each job alone, so the others still succeed.
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            return self._one_by_one(group, hook.cancelled, started, done)
        rec = group[0][0]
        if isinstance(e, ImageRejected):
            return {rec.id: self._fail(rec, e.code, e.message)}
        if isinstance(e, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
            return {rec.id: self._fail(rec, "out_of_memory", "the device ran out of memory")}
        log.exception("job %s failed unexpectedly", rec.id, exc_info=e)  # a bug or an unforeseen input
        return {rec.id: self._fail(rec, "internal_error", f"{type(e).__name__}: {e}"[:500])}

    def _one_by_one(self, group, cancelled: set[str], started: float, done: list) -> dict[str, str]:
        out = dict.fromkeys(cancelled, "cancelled")
        for pair in group:
            if pair[0].id not in cancelled:
                out.update(self._run_group_now([pair], started, done))
        return out

    def _result(self, rec: JobRecord, res: ItemResult, manifest: ModelManifest, started: float, batch: int):
        return JobResult(
            model=ModelRef(name=manifest.name, version=manifest.version, sha256=manifest.sha256),
            image=ImageSize(width=res.width, height=res.height),
            classes=res.classes,
            explanation=res.explanation,
            timings_ms=Timings(
                queue_wait_ms=round(max(0.0, started - rec.created_at) * 1000, 3),
                total_ms=round(sum(res.timings_ms.values()), 3),
                **{k: round(v, 3) for k, v in res.timings_ms.items()},
            ),
            batch_size=batch,
            media_types=res.media_types,
            reproduce=reproduction(manifest, rec, self.device_name, res.explanation.target_layer),
        )

    def finished(self, rec: JobRecord) -> None:
        """A job reached its final state here: post its webhook, if it asked for one."""
        if rec.spec.callback_url:
            try:
                with self._sending:
                    webhooks.schedule(celery_app, self.jobs.keys, rec.id)
            except Exception:
                log.exception("could not queue the webhook of job %s", rec.id)

    def _fail(self, rec: JobRecord, code: str, message: str) -> str:
        log.warning("job %s failed: %s: %s", rec.id, code, message)
        if self.jobs.fail(rec.id, rec.queue, code, message):
            self.finished(rec)
        return "failed"


class Finish:
    """A computed group's CPU half: label maps, statistics and PNGs (``Pipeline.finish``), then
    its results appended to ``done``. Callable once, on any thread; returns the outcomes it
    decided (failures, cancellations; successes are decided when ``done`` is stored).

    It never computes: on the lane's thread a second forward pass would share the model's CAM
    hooks with the task's, and mix up their activations. When one image breaks the group's
    finish, each image is finished alone from the group's computed outputs."""

    def __init__(self, runner: JobRunner, group, pipeline: Pipeline, computed: Computed, hook: StageHook,
                 manifest: ModelManifest, started: float, compute_s: float, done: list) -> None:  # fmt: skip
        self.runner, self.group, self.pipeline, self.computed = runner, group, pipeline, computed
        self.hook, self.manifest, self.started, self.compute_s, self.done = hook, manifest, started, compute_s, done
        self.records = [rec for rec, _ in group]

    def __call__(self) -> dict[str, str]:
        runner, group, hook = self.runner, self.group, self.hook
        with job_context(*(rec.id for rec in self.records)):
            t0 = time.perf_counter()
            out: dict[str, str] = {}
            try:
                try:
                    results: list[ItemResult | None] = self.pipeline.finish(self.computed, on_stage=hook)
                finally:
                    hook.close()
            except Exception as e:
                # Image by image only when an image may have broken it, not for the batch's end,
                # its time limit or a Redis outage (which _group_failed hands up to the task).
                if isinstance(e, (BatchCancelled, SoftTimeLimitExceeded, *OUTAGES)) or len(group) == 1:
                    return runner._group_failed(group, hook, e, self.started, self.done)
                results = []
                for i, pair in enumerate(group):
                    try:
                        results += self.pipeline.finish(self.computed.one(i))
                    except Exception as one:
                        results.append(None)
                        out.update(runner._group_failed([pair], hook, one, self.started, self.done))
            # What one job costs this worker, batching included (both halves, though with a
            # lane they overlap the next batch's: an upper bound, for ETAs and drain rates).
            per_job_s = (self.compute_s + time.perf_counter() - t0) / len(group)
            for rec, res in zip(self.records, results, strict=True):
                if res is not None and rec.id not in hook.cancelled:
                    result = runner._result(rec, res, self.manifest, self.started, len(group))
                    wait_s = max(0.0, self.started - rec.created_at)
                    self.done.append((rec, Completed(rec.id, rec.queue, result, res.artifacts, wait_s, per_job_s)))
            return {**out, **dict.fromkeys(hook.cancelled, "cancelled")}


class FinishLane:
    """While jobs queue back to back, one batch's CPU half (label maps, PNGs) and its completion
    round trip run on a thread of their own while this thread computes the next batch, and
    the batch after that is claimed, with its uploads, on another: the device does not wait
    for either, batch after batch (``SEGCAM_OVERLAP``). One batch at a time in the lane: at
    most three batches in memory (finishing, computing, claimed), completions in claim order."""

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self.pending: Future | None = None
        self.records: list[JobRecord] = []

    def hand_off(self, settle: Callable[[], dict[str, str]], records: list[JobRecord]) -> dict[str, str]:
        """Wait for the batch before (its outcomes are returned), then start ``settle``; started
        even when the batch before raised (a Redis error storing it), so this computed batch is
        still stored by the task's last ``wait`` rather than left running."""
        try:
            return self.wait()
        finally:
            self.pending, self.records = _thread("finish").submit(settle), records

    @staticmethod
    def take_ahead(take: Callable[[], Taken]) -> Future:
        """The next batch's claim, made while this one computes (its Redis round trip and its
        uploads' transfer cost the device nothing then: ``benchmarks.saturated_profile``)."""
        return _thread("take").submit(take)

    def wait(self) -> dict[str, str]:
        pending, self.pending = self.pending, None
        if pending is None:
            return {}
        try:
            return pending.result()
        except SoftTimeLimitExceeded:
            # The task's time ran out while the lane was still busy (only a stuck encoder takes
            # that long; the signal reaches this thread, not the lane's): its jobs fail as timed
            # out, a result it stores later is dropped, and the next batch gets a fresh lane.
            _abandon_finisher()
            msg = "the job ran past its time limit"
            return {rec.id: self.runner._fail(rec, "timeout", msg) for rec in self.records}


_THREADS: dict[tuple[int, str], ThreadPoolExecutor] = {}


def _thread(name: str) -> ThreadPoolExecutor:
    """The lane's threads ("finish", "take"), one each per process (a thread made before
    Celery's fork does not exist in the child)."""
    key = (os.getpid(), name)
    if key not in _THREADS:
        _THREADS[key] = ThreadPoolExecutor(1, thread_name_prefix=name)
    return _THREADS[key]


def _abandon_finisher() -> None:
    executor = _THREADS.pop((os.getpid(), "finish"), None)
    if executor is not None:
        executor.shutdown(wait=False)


@functools.cache
def software_versions() -> dict[str, str]:
    """Read once per process (importlib.metadata takes milliseconds); ``runtime.init`` reads
    it before the first job, so no job pays for it."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("segcam", "torch", "torchvision", "grad-cam", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def reproduction(manifest: ModelManifest, rec: JobRecord, device: str, target_layer: str) -> Reproduction:
    return Reproduction(
        architecture=manifest.architecture,
        format=manifest.format,
        input_size=manifest.input_size,
        resize="bilinear (Pillow) to input_size, aspect ratio not kept; outputs resized back bilinearly",
        normalization={"mean": manifest.normalization.mean, "std": manifest.normalization.std},
        decode="first frame, EXIF orientation applied, 16-bit scaled to 8-bit, alpha composited on white, RGB",
        method=rec.spec.method,
        target_layer=target_layer,
        target="sum of the class's logits over the pixels predicted as that class (one forward pass)",
        requested_class=rec.spec.target_class,
        variant=rec.spec.variant,
        device=device,
        software=dict(software_versions()),
    )


class StageHook:
    """Called by the pipeline at each stage boundary of a batch.

    Records the stage and reads the cancellation flags without waiting for Redis (see
    ``StageReports``); a job cancelled while running ends ``cancelled`` here (its result, if
    the batch goes on for the others, is dropped). With fault injection on, injected faults
    fire here too. ``close`` must run once the pipeline is done, whatever its outcome.
    """

    def __init__(self, runner: JobRunner, records: list[JobRecord], uploads: list[bytes]) -> None:
        self.runner = runner
        self.live = {r.id: r for r in records}
        self.cancelled: set[str] = set()
        self.reports = runner.jobs.stage_reports()
        self.faults = {}
        if runner.fault_injection:
            self.faults = {r.id: f for r, d in zip(records, uploads, strict=True) if (f := faults.read_fault(d))}

    def __call__(self, stage: str) -> None:
        # The claim itself put the jobs in "preprocess" and told their followers.
        if stage != "preprocess":
            self._cancel(self.reports.report(list(self.live), stage), stage)
        if not self.live:
            raise BatchCancelled
        for job_id, fault in self.faults.items():
            if job_id in self.live:
                faults.trigger(fault, stage)

    def close(self) -> None:
        """The pipeline is over: the last report's flags still count (the result is dropped)."""
        self._cancel(self.reports.close(), "end")

    def _cancel(self, job_ids: list[str], stage: str) -> None:
        jobs = self.runner.jobs
        for job_id in job_ids:
            rec = self.live.pop(job_id, None)
            if rec is not None and jobs.mark_cancelled(job_id, rec.queue):
                log.info("job %s cancelled at stage %s", job_id, stage)
                self.cancelled.add(job_id)
                self.runner.finished(rec)
