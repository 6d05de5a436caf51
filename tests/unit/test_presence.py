"""The heartbeat protocol on the real Redis: a beating worker is listed, a stopped one is not."""

from __future__ import annotations

import time

from shared.keys import Keys
from shared.presence import Heartbeat, live_workers


def test_a_worker_is_live_while_it_beats_and_gone_once_it_stops(rclient, prefix):
    keys = Keys(prefix)
    beat = Heartbeat(rclient, keys, "w1@host", {"device": "cpu", "models": ["shapes"]}, interval_s=0.05)
    beat.start()
    try:
        deadline = time.monotonic() + 5
        while not live_workers(rclient, keys):
            assert time.monotonic() < deadline, "never beat"
            time.sleep(0.02)
        (w,) = live_workers(rclient, keys)
        assert w["name"] == "w1@host" and w["models"] == ["shapes"]
    finally:
        beat.stop()
        beat.join(timeout=2)  # its stop event must not shadow Thread's own machinery
    assert not beat.is_alive() and live_workers(rclient, keys) == []
