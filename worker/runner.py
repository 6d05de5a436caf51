"""A job's life on the worker: claim it, run the pipeline, store artifacts, record the outcome.

Every failure a job can meet ends in a ``failed`` record with a code and a message; the
runner itself never raises for a bad job, so one bad job cannot take the worker down.
Jobs that reached a final state before (a redelivery after a crash, a cancellation) are
skipped, so a result is recorded at most once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from celery.exceptions import SoftTimeLimitExceeded

from shared.artifacts import ArtifactStore
from shared.jobs import JobRecord, JobStore
from shared.model_store import ModelNotFound, ModelStore
from shared.schemas import ImageSize, JobResult, ModelRef, Timings
from worker.loader import ModelCache, ModelLoadError
from worker.pipeline import Item, ItemResult, Pipeline

log = logging.getLogger("segcam.worker")


@dataclass
class JobFailure(Exception):
    code: str
    message: str


class JobRunner:
    def __init__(
        self, jobs: JobStore, artifacts: ArtifactStore, store: ModelStore, cache: ModelCache, worker: str
    ) -> None:
        self.jobs = jobs
        self.artifacts = artifacts
        self.store = store
        self.cache = cache
        self.worker = worker

    def run(self, job_id: str) -> str:
        """Run one job to a final state; returns the status it ended in (or why it did not run)."""
        record = self.jobs.get(job_id)
        if record is None:
            log.warning("job %s has no record (expired or never created); dropping it", job_id)
            return "missing"
        claimed = self.jobs.start(job_id, record.queue, self.worker)
        if isinstance(claimed, str):
            log.info("job %s is already %s; not running it again", job_id, claimed)
            return claimed
        started = time.time()
        try:
            outcome = self._execute(record)
        except JobFailure as f:
            return self._fail(record, f.code, f.message)
        except SoftTimeLimitExceeded:
            return self._fail(record, "timeout", "the job ran past its time limit")
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return self._fail(record, "out_of_memory", "the device ran out of memory running this job")
        except Exception as e:  # a bug or an unforeseen input: fail the job, keep the worker
            log.exception("job %s failed unexpectedly", job_id)
            return self._fail(record, "internal_error", f"{type(e).__name__}: {e}"[:500])
        res, model = outcome
        self.artifacts.put(job_id, res.artifacts)
        result = JobResult(
            model=ModelRef(name=model.name, version=model.version, sha256=model.sha256),
            image=ImageSize(width=res.width, height=res.height),
            classes=res.classes,
            explanation=res.explanation,
            timings_ms=Timings(
                queue_wait_ms=round((started - record.created_at) * 1000, 3),
                total_ms=round(sum(res.timings_ms.values()), 3),
                **{k: round(v, 3) for k, v in res.timings_ms.items()},
            ),
        )
        if not self.jobs.succeed(job_id, record.queue, result):
            log.info("job %s reached a final state elsewhere; this result is dropped", job_id)
            return "duplicate"
        return "succeeded"

    def _execute(self, record: JobRecord) -> tuple[ItemResult, object]:
        spec = record.spec
        data = self.artifacts.get_upload(record.id)
        if data is None:
            raise JobFailure("upload_missing", "the uploaded image expired before the job ran")
        try:
            manifest = self.store.manifest(spec.model, spec.model_version)
            model = self.cache.get(manifest)
        except (ModelNotFound, ModelLoadError, ValueError) as e:
            raise JobFailure("model_unavailable", str(e)) from None
        results = Pipeline(model).run([Item(record.id, data, spec.target_class)], spec.method)
        return results[0], manifest

    def _fail(self, record: JobRecord, code: str, message: str) -> str:
        log.warning("job %s failed: %s: %s", record.id, code, message)
        self.jobs.fail(record.id, record.queue, code, message)
        return "failed"
