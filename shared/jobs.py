"""Job records in Redis: created by the gateway, moved along by the worker.

Celery reports ``PENDING`` for any ID it has never seen, so segcam keeps its own record
per job. State changes are Lua scripts so that a redelivered or duplicated execution can
never overwrite a final state: a job ends ``succeeded`` exactly once in its record, however
many times a crash makes it run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from shared.keys import Keys
from shared.schemas import ErrorInfo, JobResult, JobSpec, JobStatus

_FINAL_LUA = "st == 'succeeded' or st == 'failed' or st == 'cancelled'"

# KEYS: job, queued zset, sequence, upload. ARGV: job id, job ttl, upload ttl, upload bytes,
# priority band, then field/value pairs of the record.
_CREATE = """
local seq = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[3])
redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[5]) * 1e12 + seq, ARGV[1])
return redis.call('ZRANK', KEYS[2], ARGV[1])
"""

# KEYS: job, queued zset. ARGV: job id, now, worker name.
# Returns the delivery count, or the final status when there is nothing to run.
_START = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if {_FINAL_LUA} then return st end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[2], 'worker', ARGV[3])
return redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
"""

# KEYS: job, queued zset, upload. ARGV: job id, status, now, ttl, field, value.
_FINISH = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if {_FINAL_LUA} then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3], ARGV[5], ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""


@dataclass
class JobRecord:
    id: str
    status: JobStatus
    spec: JobSpec
    queue: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    deliveries: int = 0
    error: ErrorInfo | None = None
    result: JobResult | None = None
    position: int | None = None

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> JobRecord:
        s = {k.decode(): v.decode() for k, v in h.items()}

        def num(name: str) -> float | None:
            return float(s[name]) if s.get(name) else None

        return cls(
            id=s["id"],
            status=JobStatus(s["status"]),
            spec=JobSpec.model_validate_json(s["spec"]),
            queue=s["queue"],
            created_at=float(s["created_at"]),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            worker=s.get("worker") or None,
            deliveries=int(s.get("deliveries", 0)),
            error=ErrorInfo.model_validate_json(s["error"]) if s.get("error") else None,
            result=JobResult.model_validate_json(s["result"]) if s.get("result") else None,
        )


class JobStore:
    def __init__(self, client: redis.Redis, keys: Keys, job_ttl_s: int, upload_ttl_s: int) -> None:
        self.r = client
        self.keys = keys
        self.job_ttl_s = job_ttl_s
        self.upload_ttl_s = upload_ttl_s
        self._create = client.register_script(_CREATE)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)

    def create(self, job_id: str, spec: JobSpec, queue: str, upload: bytes, priority_band: int = 0) -> int:
        """Store the upload and the record and enter the queue order; returns the position."""
        fields = {
            "id": job_id,
            "status": JobStatus.queued.value,
            "spec": spec.model_dump_json(),
            "queue": queue,
            "created_at": repr(time.time()),
            "deliveries": 0,
        }
        flat = [x for kv in fields.items() for x in kv]
        k = self.keys
        return int(
            self._create(
                keys=[k.job(job_id), k.queued(queue), k.sequence(), k.upload(job_id)],
                args=[job_id, self.job_ttl_s, self.upload_ttl_s, upload, priority_band, *flat],
            )
        )

    def get(self, job_id: str) -> JobRecord | None:
        h = self.r.hgetall(self.keys.job(job_id))
        if not h:
            return None
        rec = JobRecord.from_hash(h)
        if rec.status is JobStatus.queued:
            rank = self.r.zrank(self.keys.queued(rec.queue), job_id)
            rec.position = int(rank) if rank is not None else None
        return rec

    def start(self, job_id: str, queue: str, worker: str) -> int | str:
        """Mark running. Returns the delivery count, or why the job must not run."""
        out = self._start(
            keys=[self.keys.job(job_id), self.keys.queued(queue)], args=[job_id, repr(time.time()), worker]
        )
        return out.decode() if isinstance(out, bytes) else int(out)

    def succeed(self, job_id: str, queue: str, result: JobResult) -> bool:
        return self._finalize(job_id, queue, JobStatus.succeeded, "result", result.model_dump_json())

    def fail(self, job_id: str, queue: str, code: str, message: str) -> bool:
        err = ErrorInfo(code=code, message=message)
        return self._finalize(job_id, queue, JobStatus.failed, "error", err.model_dump_json())

    def _finalize(self, job_id: str, queue: str, status: JobStatus, field: str, value: str) -> bool:
        k = self.keys
        done = self._finish(
            keys=[k.job(job_id), k.queued(queue), k.upload(job_id)],
            args=[job_id, status.value, repr(time.time()), self.job_ttl_s, field, value],
        )
        return bool(done)

    def discard(self, job_id: str, queue: str) -> None:
        """Undo a create whose message never reached the broker, so nothing shows as queued."""
        k = self.keys
        self.r.delete(k.job(job_id), k.upload(job_id))
        self.r.zrem(k.queued(queue), job_id)

    def queue_depth(self, queue: str) -> int:
        return int(self.r.zcard(self.keys.queued(queue)))
