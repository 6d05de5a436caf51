"""benchmarks.events_idle times each state it names: the kept hub reconnects never, each
"new connection" round opens one."""

from __future__ import annotations

import asyncio

import api.events
from benchmarks.events_idle import STATES, markdown, measure, summary


def test_parked_rounds_reuse_the_connection_and_new_connection_rounds_open_one(settings, monkeypatch):
    opened = []
    real = api.events.aioredis.Redis.from_url

    def from_url(*a, **kw):
        opened.append(kw.get("client_name"))
        return real(*a, **kw)

    monkeypatch.setattr(api.events.aioredis.Redis, "from_url", from_url)
    settings.events_idle_s = 0.1
    samples = asyncio.run(measure(settings, rounds=3))
    assert len(opened) == 3 + 1 + 1  # a fresh hub per round (and the warm-up round), one kept hub
    assert {s: len(v) for s, v in samples.items()} == dict.fromkeys(STATES, 3)
    assert all(ms > 0 for v in samples.values() for ms in v)
    table = markdown(summary(samples))
    assert table.count("\n") == 1 + len(STATES) and "| parked |" in table
