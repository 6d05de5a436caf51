"""Job records and the queue order in Redis: created by the gateway, claimed and finished by workers.

Celery reports ``PENDING`` for any ID it has never seen, so segcam keeps its own record per
job, and its own queue order: a sorted set per model, scored by priority band then submit
sequence. ``ZRANK`` there is a job's queue position.

Each Celery message is a *token*: one is sent per submitted job, and the task that receives
it claims the next job(s) of its model's queue, in queue order (several at once when they
can share one batched forward pass). The claims are recorded under the token, and the
message is acknowledged only after the claimed jobs are final, so a worker that dies
mid-job loses nothing: the message comes back (requeued by Celery, or after Redis's
visibility timeout) and its task takes back the unfinished jobs. Tokens never run short:
one per job, and a token that claims k jobs leaves k-1 spare tokens behind.

State changes are Lua scripts, so a redelivered or duplicated execution can never
overwrite a final state: a job ends ``succeeded`` exactly once in its record, however many
times a crash makes it run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from shared import metrics
from shared.artifacts import ArtifactStore
from shared.keys import Keys
from shared.schemas import FINAL_STATUSES, ErrorInfo, JobResult, JobSpec, JobStatus, WebhookStatus

_FINAL_LUA = "st == 'succeeded' or st == 'failed' or st == 'cancelled'"
# A record's started_at and finished_at are read from Redis's clock inside the script that sets
# them, not from the caller's: stamps then follow the order in which the scripts ran (two
# workers' claims in claim order), and a job's start and end share one clock whichever hosts
# ran the API and the workers.
_STAMP_LUA = """local now = redis.call('TIME')
local stamp = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))"""

# KEYS: job, queued zset, sequence, upload, idempotency key, metrics hash, variants hash,
# broker list (the Celery queue), completions zset.
# ARGV: job id, job ttl, priority band, max queue depth (0: none), idempotency ttl (0: no key),
# request fingerprint, queue channel, model, variant ('' if none), Celery message ('' for
# none), start of the drain-rate window, then field/value pairs of the record.
# The upload is not an argument: a 64 KB string costs Redis about 0.1 ms to pass into Lua (and
# as much to pass out), against a few microseconds for a plain SET. The caller SETs it in the
# same MULTI, just before this script, which deletes it again when no job is created.
# Returns {'ok', position} | {'full', depth, jobs finished in the window, the oldest one's time
# ('' if none)} | {'replay', "job_id fingerprint"}. One round trip, a refusal's Retry-After
# included (``Created.drain_per_s``).
_CREATE = """
if tonumber(ARGV[5]) > 0 then
  local prev = redis.call('GET', KEYS[5])
  if prev then
    redis.call('DEL', KEYS[4])
    return {'replay', prev}
  end
end
local depth = redis.call('ZCARD', KEYS[2])
if tonumber(ARGV[4]) > 0 and depth >= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[4])
  redis.call('HINCRBY', KEYS[6], 'rejected|queue_full|' .. ARGV[8], 1)
  local done = redis.call('ZCOUNT', KEYS[9], ARGV[11], '+inf')
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[9], ARGV[11], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return {'full', depth, done, oldest[2] or ''}
end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 12))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) * 1e12 + seq, ARGV[1])
if tonumber(ARGV[5]) > 0 then
  redis.call('SET', KEYS[5], ARGV[1] .. ' ' .. ARGV[6], 'EX', ARGV[5])
end
redis.call('HINCRBY', KEYS[6], 'jobs|submitted|' .. ARGV[8], 1)
if ARGV[9] ~= '' then redis.call('HINCRBY', KEYS[7], ARGV[9], 1) end
if ARGV[10] ~= '' then redis.call('LPUSH', KEYS[8], ARGV[10]) end  -- as kombu's Redis transport does
-- Positions may have moved (a high-priority job goes ahead), and a lingering worker
-- (worker/linger.py) hears of the new job here.
redis.call('PUBLISH', ARGV[7], 'queued ' .. ARGV[1])
return {'ok', redis.call('ZRANK', KEYS[2], ARGV[1])}
"""

# What a Celery task (a token) runs: first whatever an interrupted earlier run of the same
# token claimed and left unfinished, else the next jobs of its queue, in queue order (the head
# job, then up to max-1 more with the same method among the next `window`: a batch shares one
# CAM call). Claimed jobs enter their first stage, and followers are told, in the same step.
# Every claimed job beyond the token's own first one leaves a spare token (its own message) in
# the broker list; with drop = '1' one undelivered message is taken off the list per such job,
# so a busy worker does not pay a Celery hand-off for a message that would find nothing. Fresh
# tokens are interchangeable, and each drop matches a job that left the queue, so every queued
# job still has a message; a crash before the claimed jobs finish is covered by the token's
# claims. A token with claims of its own (requeued after its worker died) is never dropped.
# KEYS: queued zset, claims set of the token, broker list (the Celery queue), running zset, then
# the worker's other broker lists, whose messages the reply reports.
# ARGV: job key prefix, worker, token, max, window, claims ttl, job events prefix, queue
# channel, mode ('take' | 'claim' | 'reclaim'), method ('' for any: the head job's method then
# decides), drop ('1' | '0'), claims key prefix, backlog only ('1': claim no more jobs than
# there are undelivered messages, so a draining worker never takes a job an idle one is about
# to get), load ('1': return the jobs' records too), yield ('1': claim nothing in 'claim' mode
# while one of the other lists holds a message).
# Returns {'reclaimed' | 'claimed', {id, ...}, {record, ...}, waiting}, each record as HGETALL
# gives it; waiting: 1 if one of the other lists holds a message. Uploads are read outside the
# script (see _CREATE on large strings and Lua).
_TAKE = f"""
{_STAMP_LUA}
local waiting = 0
for i = 5, #KEYS do
  if redis.call('LLEN', KEYS[i]) > 0 then waiting = 1 end
end
local function out(kind, ids)
  local records = {{}}
  if ARGV[14] == '1' then
    for _, id in ipairs(ids) do table.insert(records, redis.call('HGETALL', ARGV[1] .. id)) end
  end
  return {{kind, ids, records, waiting}}
end
local mode = ARGV[9]
if mode == 'claim' and waiting == 1 and ARGV[15] == '1' then return out('claimed', {{}}) end
if mode ~= 'claim' then
  local left = {{}}
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local jk = ARGV[1] .. id
    local st = redis.call('HGET', jk, 'status')
    if st and not ({_FINAL_LUA}) then
      redis.call('HSET', jk, 'status', 'running', 'started_at', stamp, 'worker', ARGV[2], 'stage', 'preprocess')
      redis.call('HINCRBY', jk, 'deliveries', 1)
      redis.call('ZADD', KEYS[4], stamp, id)
      redis.call('PUBLISH', ARGV[7] .. id, 'preprocess')
      table.insert(left, id)
    end
  end
  if #left > 0 or mode == 'reclaim' then return out('reclaimed', left) end
end
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[5]) - 1)
local claimed = {{}}
local method = ARGV[10] ~= '' and ARGV[10] or false
local most = tonumber(ARGV[4])
if ARGV[13] == '1' then  -- backlog only: as many as there are undelivered messages (idle workers get the rest)
  most = math.min(most, redis.call('LLEN', KEYS[3]))
end
for _, id in ipairs(ids) do
  if #claimed >= most then break end
  local jk = ARGV[1] .. id
  local rec = redis.call('HMGET', jk, 'status', 'method')
  if rec[1] ~= 'queued' then
    redis.call('ZREM', KEYS[1], id)  -- expired, cancelled or final: not part of the order
  elseif not method or rec[2] == method then
    method = rec[2]
    redis.call('ZREM', KEYS[1], id)
    redis.call('HSET', jk, 'status', 'running', 'started_at', stamp, 'worker', ARGV[2], 'token', ARGV[3],
               'stage', 'preprocess')
    redis.call('HINCRBY', jk, 'deliveries', 1)
    redis.call('SADD', KEYS[2], id)
    redis.call('ZADD', KEYS[4], stamp, id)
    redis.call('PUBLISH', ARGV[7] .. id, 'preprocess')
    table.insert(claimed, id)
  end
end
if #claimed > 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('PUBLISH', ARGV[8], 'moved')  -- everyone behind moved up
  if ARGV[11] == '1' then
    -- Newest messages first. A message that was delivered before (requeued after a crash) or
    -- whose token still holds claims must run to take its jobs back: it is put back untouched.
    local spare = #claimed - (mode == 'take' and 1 or 0)
    local kept = {{}}
    while spare > 0 do
      local msg = redis.call('LPOP', KEYS[3])
      if not msg then break end
      local ok, m = pcall(cjson.decode, msg)
      local h = ok and type(m) == 'table' and type(m.headers) == 'table' and m.headers or nil
      if h and type(h.id) == 'string' and not h.redelivered and redis.call('EXISTS', ARGV[12] .. h.id) == 0 then
        spare = spare - 1
      else
        table.insert(kept, msg)
      end
    end
    for i = #kept, 1, -1 do redis.call('LPUSH', KEYS[3], kept[i]) end
  end
end
return out('claimed', claimed)
"""

# KEYS: job, queued zset, upload, completions zset, metrics hash, job events channel, running zset.
# ARGV: job id, status, ttl, field, value, model.
# The final record travels in the event ("<status> <record as JSON>"): a follower waiting
# for the end answers from it instead of reading the record back (one round trip less).
_FINISH = f"""
{_STAMP_LUA}
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if {_FINAL_LUA} then return 0 end
redis.call('HINCRBY', KEYS[5], 'jobs|' .. ARGV[2] .. '|' .. ARGV[6], 1)
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', stamp, ARGV[4], ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('DEL', KEYS[3])
if st == 'running' then
  redis.call('ZADD', KEYS[4], stamp, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(stamp) - 60)
end
local flat, rec = redis.call('HGETALL', KEYS[1]), {{}}
for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
redis.call('PUBLISH', KEYS[6], ARGV[2] .. ' ' .. cjson.encode(rec))
return 1
"""

# KEYS: job, queued zset, upload, metrics hash. ARGV: job id, ttl, error json, model.
# A queued job is cancelled at once and never runs; a running one is flagged for the worker.
_CANCEL = f"""
{_STAMP_LUA}
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if {_FINAL_LUA} then return st end
if st == 'queued' then
  redis.call('HINCRBY', KEYS[4], 'jobs|cancelled|' .. ARGV[4], 1)
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', stamp, 'error', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[3])
  return 'cancelled'
end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
return 'cancelling'
"""


# KEYS: running zset, metrics hash. ARGV: cutoff (Redis time), job key prefix, claims key prefix,
# job events prefix, then seven per job: id, queued zset, queue score, broker list, Celery
# message, queue channel, model ('' for a job whose record is gone or final: only its entry goes).
# A job is put back only while it is still running and its latest claim is at or before the
# cutoff: a take that claimed it again since (a redelivered message) restamped its entry.
# Returns the IDs put back.
_REQUEUE = """
local cutoff = tonumber(ARGV[1])
local back = {}
for i = 5, #ARGV, 7 do
  local id = ARGV[i]
  local claimed = redis.call('ZSCORE', KEYS[1], id)
  if claimed and tonumber(claimed) <= cutoff then
    local jk = ARGV[2] .. id
    local rec = redis.call('HMGET', jk, 'status', 'token')
    if rec[1] == 'running' and ARGV[i + 6] ~= '' then
      if rec[2] then redis.call('SREM', ARGV[3] .. rec[2], id) end
      redis.call('HSET', jk, 'status', 'queued')
      redis.call('HDEL', jk, 'started_at', 'worker', 'token', 'stage')
      redis.call('ZADD', ARGV[i + 1], ARGV[i + 2], id)
      redis.call('LPUSH', ARGV[i + 3], ARGV[i + 4])
      redis.call('HINCRBY', KEYS[2], 'jobs|requeued|' .. ARGV[i + 6], 1)
      redis.call('PUBLISH', ARGV[4] .. id, 'changed')
      redis.call('PUBLISH', ARGV[i + 5], 'queued ' .. id)
      table.insert(back, id)
    end
    if rec[1] ~= 'running' or ARGV[i + 6] ~= '' then redis.call('ZREM', KEYS[1], id) end
  end
end
return back
"""


# KEYS: queued zset, broker list, kombu's unacknowledged hash. ARGV: the queue's name and channel,
# then Celery messages to push (none: only count). Every queued job is owed a message: one in the
# list, or one a worker holds unacknowledged and has yet to claim with (counted as such even when
# its task has claimed already, so a deficit shows late rather than early; see top_up_tokens).
# Returns {short, pushed, the IDs of the first `short` queued jobs}.
_TOP_UP = """
local short = redis.call('ZCARD', KEYS[1]) - redis.call('LLEN', KEYS[2])
if short > 0 then  -- the usual answer, found without reading what every worker holds
  for _, raw in ipairs(redis.call('HVALS', KEYS[3])) do
    local ok, entry = pcall(cjson.decode, raw)  -- [message, exchange, routing key]
    if ok and type(entry) == 'table' and entry[3] == ARGV[1] then short = short - 1 end
  end
end
local pushed = 0
for i = 3, #ARGV do
  if pushed >= short then break end
  redis.call('LPUSH', KEYS[2], ARGV[i])
  pushed = pushed + 1
end
local heads = {}
if short > 0 then heads = redis.call('ZRANGE', KEYS[1], 0, short - 1) end
if pushed > 0 then redis.call('PUBLISH', ARGV[2], 'queued ' .. heads[1]) end  -- a lingering task hears it
return {short, pushed, heads}
"""


@dataclass
class Completed:
    """A job that succeeded on a worker, ready to be recorded."""

    job_id: str
    queue: str
    result: JobResult
    artifacts: dict[str, bytes]
    queue_wait_s: float
    service_s: float


@dataclass
class Taken:
    """What a take did: the jobs claimed (or taken back after a crash, ``reclaimed``), and
    with ``load`` their records and uploads (None where the record or upload has expired)."""

    reclaimed: bool
    job_ids: list[str]
    loaded: dict[str, tuple[JobRecord | None, bytes | None]]
    others_waiting: bool = False  # a message waits on one of the ``others`` broker queues


@dataclass
class Created:
    """What a create did: made a job (position), found the queue full, or replayed a key."""

    job_id: str
    position: int | None = None
    full: bool = False
    drain_per_s: float = 0.0  # with ``full``: jobs the queue finished per second (``drain_window_s``)
    replayed: bool = False
    fingerprint_matches: bool = True


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
    token: str | None = None  # the Celery task that claimed it
    owner: str = ""  # API key ID that created it ("" with keys off)
    stage: str | None = None
    cancel_requested: bool = False
    webhook: WebhookStatus | None = None
    deliveries: int = 0
    error: ErrorInfo | None = None
    result: JobResult | None = None
    position: int | None = None

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> JobRecord:
        return cls.from_fields({k.decode(): v.decode() for k, v in h.items()})

    @classmethod
    def from_event(cls, message: str) -> JobRecord | None:
        """The record a final event carries (``"<status> <record as JSON>"``, see ``_FINISH``);
        None for any other event (a stage name, "changed", "moved")."""
        status, sep, body = message.partition(" ")
        if not sep or status not in FINAL_STATUSES:
            return None
        return cls.from_fields(json.loads(body))

    @classmethod
    def from_fields(cls, s: dict[str, str]) -> JobRecord:
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
            token=s.get("token") or None,
            owner=s.get("owner", ""),
            stage=s.get("stage") or None,
            cancel_requested=bool(s.get("cancel_requested")),
            webhook=WebhookStatus.model_validate_json(s["webhook"]) if s.get("webhook") else None,
            deliveries=int(s.get("deliveries", 0)),
            error=ErrorInfo.model_validate_json(s["error"]) if s.get("error") else None,
            result=JobResult.model_validate_json(s["result"]) if s.get("result") else None,
        )


class JobStore:
    def __init__(
        self, client: redis.Redis, keys: Keys, job_ttl_s: int, upload_ttl_s: int, claims_ttl_s: int = 7200
    ) -> None:
        self.r = client
        self.claims_ttl_s = claims_ttl_s
        self.keys = keys
        self.job_ttl_s = job_ttl_s
        self.upload_ttl_s = upload_ttl_s
        self.drain_window_s = 60.0  # the past that a queue's drain rate (Retry-After) is measured over
        self._cancel = client.register_script(_CANCEL)

    def create(
        self,
        job_id: str,
        spec: JobSpec,
        queue: str,
        upload: bytes,
        priority_band: int = 1,
        max_depth: int = 0,
        owner: str = "",
        idempotency_key: str | None = None,
        idempotency_ttl_s: int = 0,
        fingerprint: str = "",
        message: bytes = b"",
    ) -> Created:
        """Store the upload and the record, enter the queue order and push the Celery
        ``message`` (see ``shared.celery_app.task_message``), atomically, unless the queue is
        full or the idempotency key was seen (then the earlier job is returned)."""
        now = time.time()
        fields = {
            "id": job_id,
            "status": JobStatus.queued.value,
            "spec": spec.model_dump_json(),
            "method": spec.method.value,
            "queue": queue,
            "owner": owner,
            "created_at": repr(now),
            "deliveries": 0,
        }
        flat = [x for kv in fields.items() for x in kv]
        k = self.keys
        idem_ttl = idempotency_ttl_s if idempotency_key else 0
        model = k.model_of(queue)
        keys = [k.job(job_id), k.queued(queue), k.sequence(), k.upload(job_id),
                k.idempotency(owner, idempotency_key or ""), k.metrics(), k.variants(model), queue,
                k.completions(queue)]  # fmt: skip
        args = [job_id, self.job_ttl_s, priority_band, max_depth, idem_ttl, fingerprint, k.queue_events(queue), model,
                spec.variant or "", message, repr(now - self.drain_window_s), *flat]  # fmt: skip
        pipe = self.r.pipeline(transaction=True)  # MULTI: the upload and the job exist together or not at all
        pipe.set(k.upload(job_id), upload, ex=self.upload_ttl_s)
        pipe.eval(_CREATE, len(keys), *keys, *args)  # by its body, as _queue_finish does: no SCRIPT EXISTS first
        kind, value, *drain = pipe.execute()[1]
        kind = kind.decode()
        if kind == "full":
            done, oldest = int(drain[0]), float(drain[1]) if drain[1] else now
            per_s = done / max(1.0, now - oldest) if done else 0.0  # over at least one second
            return Created(job_id="", full=True, position=int(value), drain_per_s=per_s)
        if kind == "replay":
            prev_id, _, prev_fp = value.decode().partition(" ")
            return Created(job_id=prev_id, replayed=True, fingerprint_matches=prev_fp == fingerprint)
        return Created(job_id=job_id, position=int(value))

    def get(self, job_id: str, _again: bool = True) -> JobRecord | None:
        h = self.r.hgetall(self.keys.job(job_id))
        if not h:
            return None
        rec = JobRecord.from_hash(h)
        if rec.status is JobStatus.queued:
            rank = self.r.zrank(self.keys.queued(rec.queue), job_id)
            if rank is None and _again:  # claimed or cancelled between the two reads: read the news
                return self.get(job_id, _again=False)
            rec.position = int(rank) if rank is not None else None
        return rec

    def take(
        self,
        queue: str,
        token: str,
        worker: str,
        max_jobs: int = 1,
        window: int = 64,
        mode: str = "take",
        method: str = "",
        drop_spare: bool = False,
        backlog_only: bool = False,
        load: bool = False,
        hint: str | None = None,
        others: tuple[str, ...] = (),
        yield_to_others: bool = False,
    ) -> Taken:
        """The jobs the task ``token`` runs now, and whether they were taken back after a crash; see _TAKE.
        ``drop_spare``: take the spare messages of the extra jobs off the broker queue ``queue``.
        ``load``: bring back their records and uploads too (what ``load_for_run`` reads). The
        upload of ``hint``, the job the token's message was sent for (the one claimed at low
        load), is read in the same round trip; any other claimed job's upload in one more.
        ``others``: the worker's other broker queues, looked at in the same step, so a draining
        task hands the worker back when another of its models has work; ``yield_to_others``:
        then claim nothing (a claim made ahead, while a batch computes, would make that work
        wait one batch more)."""
        k = self.keys
        keys = [k.queued(queue), k.claims(token), queue or k.claims(token), k.running(), *others]
        args = [k.job(""), worker, token, max_jobs, max(window, max_jobs), self.claims_ttl_s,
                k.job_events(""), k.queue_events(queue), mode, method, "1" if drop_spare else "0", k.claims(""),
                "1" if backlog_only else "0", "1" if load else "0", "1" if yield_to_others else "0"]  # fmt: skip
        pipe = self.r.pipeline(transaction=False)
        pipe.eval(_TAKE, len(keys), *keys, *args)  # by its body: no SCRIPT EXISTS round trip first
        if load and hint:
            pipe.get(k.upload(hint))  # speculative: dropped if another job was claimed
        replies = pipe.execute()
        kind, ids, records, waiting = replies[0]
        job_ids = [x.decode() for x in ids]
        runs = {}
        if load:
            uploads = {hint: replies[1]} if hint in job_ids else {}
            if missing := [j for j in job_ids if j not in uploads]:
                uploads.update(zip(missing, self.r.mget([k.upload(j) for j in missing]), strict=True))
            runs = {j: self._loaded(h, uploads[j]) for j, h in zip(job_ids, records, strict=True)}
        return Taken(kind == b"reclaimed", job_ids, runs, bool(waiting))

    def claim(
        self,
        queue: str,
        token: str,
        worker: str,
        max_jobs: int = 1,
        window: int = 64,
        method: str = "",
        drop_spare: bool = False,
        backlog_only: bool = False,
    ) -> list[str]:
        """The next jobs of ``queue``, in order, claimed for ``token`` (only ``method``'s, if given)."""
        return self.take(
            queue, token, worker, max_jobs, window, mode="claim", method=method, drop_spare=drop_spare,
            backlog_only=backlog_only,
        ).job_ids  # fmt: skip

    def reclaim(self, token: str, worker: str) -> list[str]:
        """The unfinished jobs an earlier run of ``token`` claimed (it crashed or was killed)."""
        return self.take("", token, worker, mode="reclaim").job_ids

    def load_for_run(self, job_ids: list[str]) -> list[tuple[JobRecord | None, bytes | None]]:
        """Records and uploads of the jobs a worker is about to run, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for j in job_ids:
            pipe.hgetall(self.keys.job(j))
            pipe.get(self.keys.upload(j))
        got = pipe.execute()
        return [self._loaded(h, up) for h, up in zip(got[0::2], got[1::2], strict=True)]

    @staticmethod
    def _loaded(h: dict | list, upload: bytes | None) -> tuple[JobRecord | None, bytes | None]:
        """A record as HGETALL gave it (a dict from redis-py, a flat list from a Lua script) and its upload."""
        if isinstance(h, list):
            h = dict(zip(h[0::2], h[1::2], strict=True))
        return (JobRecord.from_hash(h) if h else None, upload)

    def complete(
        self, done: list[Completed], artifacts: ArtifactStore, token: str | None = None, claims: list[str] | None = None
    ) -> list[bool]:
        """Store the artifacts and results of succeeded jobs, their timings and the end of the
        token's ``claims`` (only these: a worker may finish one batch while it runs the next
        under the same token): one round trip. Returns, per job, whether its result was
        recorded (False: it was already final, e.g. after a duplicate run).

        One MULTI: Redis refuses a transaction whole when it refuses one of its writes (memory
        full), so the claims end only with the results stored. Without it, the SREM (which Redis
        allows when full) would end the claims of jobs whose results were refused, and no run of
        the token could find them again."""
        k = self.keys
        pipe = self.r.pipeline(transaction=True)
        for d in done:
            artifacts.stage(pipe, d.job_id, d.artifacts)
        marks = []
        for d in done:
            marks.append(len(pipe))
            self._queue_finish(pipe, d.job_id, d.queue, JobStatus.succeeded, "result", d.result.model_dump_json())
            pipe.lpush(k.service_times(d.queue), f"{d.service_s:.6f}")
            pipe.ltrim(k.service_times(d.queue), 0, 49)
            metrics.observe(pipe, k, "queue_wait", k.model_of(d.queue), d.queue_wait_s)
            metrics.observe(pipe, k, "service", k.model_of(d.queue), d.service_s)
        if token is not None and claims:
            pipe.srem(k.claims(token), *claims)
        results = pipe.execute()
        return [bool(results[i]) for i in marks]

    def requeue_orphans(
        self, older_than_s: float, message_for, limit: int = 100, worker: str | None = None, cutoff: float | None = None
    ) -> list[str]:
        """Put back on their queues the running jobs claimed more than ``older_than_s`` ago, each
        with a new Celery message from ``message_for(job_id, queue, model)``; returns their IDs.
        With ``worker`` and ``cutoff`` (Redis time): only that worker's jobs claimed before it.

        No run outlives the hard time limit, and a message that a dead worker left unacknowledged
        comes back within the visibility timeout and claims its jobs again (which restamps them).
        A job still running past both has lost its message: Celery acknowledged it while Redis
        could not record the job's end (``worker/tasks.fail_claims_through_outages``), or Redis
        lost the unacknowledged record. Without this it would show ``running`` until its record
        expired. Its position is its original one, and its next claim counts toward
        ``max_deliveries``; the old token, should it ever run, finds the job no longer its own.
        A job whose cancellation was requested while it ran ends ``cancelled`` instead."""
        k = self.keys
        if cutoff is None:
            now_s, now_us = self.r.time()
            cutoff = now_s + now_us / 1e6 - older_than_s
        ids = [x.decode() for x in self.r.zrangebyscore(k.running(), "-inf", cutoff, start=0, num=limit)]
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for j in ids:
            pipe.hmget(k.job(j), "status", "spec", "queue", "seq", "cancel_requested", "worker")
        args = [repr(cutoff), k.job(""), k.claims(""), k.job_events("")]
        for j, (status, spec, queue, seq, cancel, owner) in zip(ids, pipe.execute(), strict=True):
            if worker is not None and status == b"running" and owner != worker.encode():
                continue  # another worker's: not this sweep's to judge
            if status != b"running" or not (spec and queue and seq):
                args += [j, "", "", "", "", "", ""]  # gone or final: its entry is dropped
                continue
            spec, queue = JobSpec.model_validate_json(spec), queue.decode()
            if cancel:  # its client no longer wants it (a final state leaves the index)
                self.mark_cancelled(j, queue)
                continue
            score = spec.priority.band * 1e12 + int(seq)  # as _CREATE scores it
            message = message_for(j, queue, spec.model)
            args += [j, k.queued(queue), repr(score), queue, message, k.queue_events(queue), k.model_of(queue)]
        if len(args) == 4:  # every one of them cancelled
            return []
        return [x.decode() for x in self.r.eval(_REQUEUE, 2, k.running(), k.metrics(), *args)]

    def top_up_tokens(self, queue: str, message_for, unacked_key: str = "unacked") -> int:
        """Give ``queue``'s queued jobs the messages they are owed; returns how many were pushed.

        The gateway creates each job with its message, and a take that claims extra jobs takes
        only as many messages off, so every queued job has one, but kombu can still lose one: a
        worker killed between the BRPOP that took a message and its write of the
        unacknowledged record. The job would then stay ``queued`` until some later submission's
        message ran it. An extra message is harmless (its task finds nothing and ends), a
        missing one is not. A message a worker holds is counted as owed to a queued job even once
        its task has claimed, so a deficit shows late rather than early (early by one only while a
        message is between a BRPOP and its unacknowledged record, and then the extra is harmless)."""
        k = self.keys
        keys = [k.queued(queue), queue, unacked_key]
        short, _, heads = self.r.eval(_TOP_UP, 3, *keys, queue, k.queue_events(queue))
        if short <= 0:
            return 0
        model = k.model_of(queue)
        messages = [message_for(j.decode(), queue, model) for j in heads]
        return int(self.r.eval(_TOP_UP, 3, *keys, queue, k.queue_events(queue), *messages)[1])

    def claimed(self, token: str) -> list[str]:
        return [x.decode() for x in self.r.smembers(self.keys.claims(token))]

    def release(self, token: str) -> None:
        """The token's run is over and every job it claimed is final: forget the claims."""
        self.r.delete(self.keys.claims(token))

    def succeed(self, job_id: str, queue: str, result: JobResult) -> bool:
        return self._finalize(job_id, queue, JobStatus.succeeded, "result", result.model_dump_json())

    def fail(self, job_id: str, queue: str, code: str, message: str) -> bool:
        err = ErrorInfo(code=code, message=message)
        return self._finalize(job_id, queue, JobStatus.failed, "error", err.model_dump_json())

    def mark_cancelled(self, job_id: str, queue: str) -> bool:
        """A running job whose cancellation the worker honoured at a stage boundary."""
        err = ErrorInfo(code="cancelled", message="cancelled by the client while running")
        return self._finalize(job_id, queue, JobStatus.cancelled, "error", err.model_dump_json())

    def cancel(self, job_id: str, queue: str) -> str:
        """Returns 'cancelled' (was queued), 'cancelling' (running: flagged), a final status, or 'missing'."""
        k = self.keys
        err = ErrorInfo(code="cancelled", message="cancelled by the client before it ran").model_dump_json()
        out = self._cancel(
            keys=[k.job(job_id), k.queued(queue), k.upload(job_id), k.metrics()],
            args=[job_id, self.job_ttl_s, err, k.model_of(queue)],
        ).decode()
        self.notify(job_id)
        if out == "cancelled":
            self.notify_queue(queue)
        return out

    def stage_reports(self) -> StageReports:
        return StageReports(self)

    def _finalize(self, job_id: str, queue: str, status: JobStatus, field: str, value: str) -> bool:
        pipe = self.r.pipeline(transaction=False)
        self._queue_finish(pipe, job_id, queue, status, field, value)
        return bool(pipe.execute()[0])

    def _queue_finish(self, pipe, job_id: str, queue: str, status: JobStatus, field: str, value: str) -> None:
        """Queue the finishing script on ``pipe`` by its body: a pipeline holding a registered
        script first asks SCRIPT EXISTS, one more round trip per completion; Redis caches
        the body's compiled script all the same."""
        k = self.keys
        keys = [k.job(job_id), k.queued(queue), k.upload(job_id), k.completions(queue), k.metrics(),
                k.job_events(job_id), k.running()]  # fmt: skip
        args = [job_id, status.value, self.job_ttl_s, field, value, k.model_of(queue)]
        pipe.eval(_FINISH, len(keys), *keys, *args)

    def mean_service_s(self, queue: str) -> float | None:
        """Moving average of the last 50 per-job service times of ``queue``."""
        vals = [float(v) for v in self.r.lrange(self.keys.service_times(queue), 0, -1)]
        return sum(vals) / len(vals) if vals else None

    def set_webhook(self, job_id: str, status: WebhookStatus) -> None:
        self.r.hset(self.keys.job(job_id), "webhook", status.model_dump_json())

    def notify(self, *job_ids: str) -> None:
        """Wake whoever follows these jobs (SSE streams, long polls): their record changed."""
        pipe = self.r.pipeline(transaction=False)
        for j in job_ids:
            pipe.publish(self.keys.job_events(j), "changed")
        pipe.execute()

    def notify_queue(self, queue: str) -> None:
        """Positions in ``queue`` changed: wake the followers of every job queued there."""
        self.r.publish(self.keys.queue_events(queue), "moved")

    def queue_depth(self, queue: str) -> int:
        return int(self.r.zcard(self.keys.queued(queue)))


class StageReports:
    """A running batch's stage reports, written without waiting for Redis.

    Recording a stage (and telling the job's followers) would cost a round trip at every
    stage boundary, in the middle of the job. The commands are written at once and their
    replies read at the next boundary (or by ``close``), by when they have long arrived.
    The cancellation flags come back with those replies, so they are as of the previous
    boundary: a running job whose cancellation is requested stops at the second stage
    boundary after the request at the latest, or has its result dropped at the end.
    """

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.conn = None
        self.sent: list[str] = []  # jobs whose replies are still to be read

    def report(self, job_ids: list[str], stage: str) -> list[str]:
        """Record ``stage`` for ``job_ids``; returns the jobs found flagged for cancellation by
        the previous report (they get no new stage)."""
        cancelled = self._collect()
        live = [j for j in job_ids if j not in cancelled]
        if live:
            k = self.jobs.keys
            commands = []
            for j in live:
                commands += [("HSET", k.job(j), "stage", stage), ("HGET", k.job(j), "cancel_requested"),
                             ("PUBLISH", k.job_events(j), stage)]  # fmt: skip
            if self.conn is None:
                self.conn = self.jobs.r.connection_pool.get_connection()
            try:
                self.conn.send_packed_command(self.conn.pack_commands(commands))
            except BaseException:
                self._drop()
                raise
            self.sent = live
        return cancelled

    def close(self) -> list[str]:
        """Read what is outstanding and give the connection back; returns the jobs flagged for
        cancellation by the last report."""
        try:
            return self._collect()
        finally:
            if self.conn is not None:
                self.jobs.r.connection_pool.release(self.conn)
                self.conn = None

    def _collect(self) -> list[str]:
        sent, self.sent = self.sent, []
        if not sent:
            return []
        try:
            replies = [self.conn.read_response() for _ in range(3 * len(sent))]
        except BaseException:
            self._drop()
            raise
        return [j for j, flag in zip(sent, replies[1::3], strict=True) if flag]

    def _drop(self) -> None:
        """A failed write or read leaves replies unaccounted for: the connection is not reused."""
        self.sent = []
        if self.conn is not None:
            self.conn.disconnect()
            self.jobs.r.connection_pool.release(self.conn)
            self.conn = None
