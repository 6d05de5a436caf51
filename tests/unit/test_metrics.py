"""The Prometheus text the gateway renders from the counters in Redis (real Redis, test prefix)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from shared.keys import Keys
from shared.metrics import render


def samples(text: str, family: str) -> dict[tuple, float]:
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return {tuple(sorted(s.labels.items())): s.value for s in fams[family].samples}


def test_refusal_counters_start_at_zero_per_model_and_count_each_reason(rclient, prefix):
    """Each series exists from zero, so rate() and an alert see the first 429; there used to be
    one placeholder series, model="" reason="none", until a first refusal replaced it."""
    keys = Keys(prefix)
    before = samples(render(rclient, keys, ["roads", "shapes"], 1), "segcam_jobs_rejected")
    assert before == {
        (("model", "roads"), ("reason", "queue_full")): 0,
        (("model", "shapes"), ("reason", "queue_full")): 0,
        (("model", "*"), ("reason", "rate_limited")): 0,
    }
    rclient.hincrby(keys.metrics(), "rejected|queue_full|shapes", 3)
    rclient.hincrby(keys.metrics(), "rejected|rate_limited|*", 2)
    after = samples(render(rclient, keys, ["roads", "shapes"], 1), "segcam_jobs_rejected")
    assert after[(("model", "shapes"), ("reason", "queue_full"))] == 3
    assert after[(("model", "*"), ("reason", "rate_limited"))] == 2
    assert after[(("model", "roads"), ("reason", "queue_full"))] == 0 and len(after) == 3
