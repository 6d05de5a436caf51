"""Cluster-wide metrics kept in Redis and rendered in the Prometheus text format.

Counters and histogram buckets are Redis hash fields, written where things happen (the
gateway counts submissions and refusals, the job scripts count outcomes, workers observe
queue wait and service time), so every API replica's ``/metrics`` shows the same totals
whichever process did the work.
"""

from __future__ import annotations

import bisect

import redis

from shared.keys import Keys

QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SERVICE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HISTOGRAMS = {
    "queue_wait": (
        "segcam_queue_wait_seconds",
        "Time from submission to a worker starting the job",
        QUEUE_WAIT_BUCKETS,
    ),
    "service": ("segcam_service_seconds", "Worker compute time per job (decode to encode)", SERVICE_BUCKETS),
}
JOB_COUNTERS = {
    "submitted": "Jobs accepted (202)",
    "succeeded": "Jobs that succeeded",
    "failed": "Jobs that failed",
    "cancelled": "Jobs cancelled",
    "requeued": "Running jobs put back on their queue after their Celery message was lost",
}


def count(pipe, keys: Keys, field: str, amount: int = 1) -> None:
    pipe.hincrby(keys.metrics(), field, amount)


def observe(pipe, keys: Keys, name: str, model: str, value_s: float) -> None:
    buckets = HISTOGRAMS[name][2]
    i = bisect.bisect_left(buckets, value_s)
    le = repr(float(buckets[i])) if i < len(buckets) else "+Inf"
    pipe.hincrby(keys.metrics(), f"h|{name}|{model}|{le}", 1)
    pipe.hincrbyfloat(keys.metrics(), f"hs|{name}|{model}", value_s)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(client: redis.Redis, keys: Keys, models: list[str], live_workers: int) -> str:
    raw = {k.decode(): v.decode() for k, v in client.hgetall(keys.metrics()).items()}
    pipe = client.pipeline(transaction=False)
    for m in models:
        pipe.zcard(keys.queued(keys.celery_queue(m)))
        pipe.hgetall(keys.variants(m))
    got = pipe.execute()
    depths, variants = got[0::2], got[1::2]
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    for status, help_ in JOB_COUNTERS.items():
        family(f"segcam_jobs_{status}_total", "counter", help_)
        for m in models:
            out.append(f'segcam_jobs_{status}_total{{model="{_esc(m)}"}} {int(raw.get(f"jobs|{status}|{m}", 0))}')
    family("segcam_jobs_rejected_total", "counter", "Submissions refused with 429 (queue full or rate limited)")
    # Every series that can count is there from zero, so rate() and alerts see the first refusal;
    # rate limits are counted per API key, before a model is chosen: model "*".
    rejected = {("queue_full", m): 0 for m in models} | {("rate_limited", "*"): 0}
    for k, v in raw.items():
        if k.startswith("rejected|"):
            _, reason, model = k.split("|", 2)
            rejected[(reason, model)] = int(v)
    for (reason, model), v in sorted(rejected.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        out.append(f'segcam_jobs_rejected_total{{model="{_esc(model)}",reason="{_esc(reason)}"}} {v}')
    family("segcam_queue_depth", "gauge", "Jobs waiting in each model's queue")
    for m, d in zip(models, depths, strict=True):
        out.append(f'segcam_queue_depth{{model="{_esc(m)}"}} {int(d)}')
    family("segcam_ab_jobs_total", "counter", "Jobs routed to each A/B variant of a model")
    for m, vs in zip(models, variants, strict=True):
        for variant, n in sorted(vs.items()):
            out.append(f'segcam_ab_jobs_total{{model="{_esc(m)}",variant="{_esc(variant.decode())}"}} {int(n)}')
    family("segcam_workers_live", "gauge", "Workers with a live heartbeat")
    out.append(f"segcam_workers_live {live_workers}")
    for key, (name, help_, buckets) in HISTOGRAMS.items():
        family(name, "histogram", help_)
        for m in models:
            cum = 0
            for le in [repr(float(b)) for b in buckets] + ["+Inf"]:
                cum += int(raw.get(f"h|{key}|{m}|{le}", 0))
                out.append(f'{name}_bucket{{model="{_esc(m)}",le="{le}"}} {cum}')
            out.append(f'{name}_sum{{model="{_esc(m)}"}} {float(raw.get(f"hs|{key}|{m}", 0.0))}')
            out.append(f'{name}_count{{model="{_esc(m)}"}} {cum}')
    return "\n".join(out) + "\n"
