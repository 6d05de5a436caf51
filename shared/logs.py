"""Logging for every segcam process: plain or JSON lines, with the job ID on each line about a job.

The job ID comes from a context variable that the gateway and the worker set while they
handle a job (several IDs for a batch), or, for Celery's own task lines, from the task ID,
which is the ID of the job whose submission sent the message.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time

current_jobs: contextvars.ContextVar[str | None] = contextvars.ContextVar("segcam_jobs", default=None)


@contextlib.contextmanager
def job_context(*job_ids: str):
    token = current_jobs.set(",".join(job_ids))
    try:
        yield
    finally:
        current_jobs.reset(token)


class JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        job = current_jobs.get()
        if job is None and isinstance(record.args, dict) and "id" in record.args:
            job = str(record.args["id"])  # Celery's "Task ...[id] received/succeeded" lines
        record.job_id = job or ""
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if getattr(record, "job_id", ""):
            entry["job_id"] = record.job_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(component: str, level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobIdFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter(component))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {component} %(name)s [job=%(job_id)s] %(message)s")
        )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings become log lines (JSON too)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "kombu", "httpx"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("httpx").setLevel("WARNING")
