"""benchmarks.label_map compares what it says: its "before" is the pipeline's old label map
(every channel upsampled within the budget, nearest neighbour above it), and it counts pixels
off against the full upsampling."""

from __future__ import annotations

import numpy as np

from benchmarks import label_map


def test_before_within_the_budget_is_the_full_upsampling_and_above_it_the_nearest_one(monkeypatch):
    logits = label_map.synthetic(C=5, size=24, seed=1)
    within, counts = label_map.before(logits, 60, 80)
    assert np.array_equal(within, label_map.full_argmax(logits, 60, 80))
    assert counts.sum() == 60 * 80
    monkeypatch.setattr(label_map, "BUDGET", 0)
    above, _ = label_map.before(logits, 72, 72)
    nearest = np.repeat(np.repeat(logits[0].argmax(0).numpy(), 3, 0), 3, 1)
    assert np.array_equal(above, nearest)


def test_measure_reports_both_ways_and_now_is_never_off():
    got = label_map.measure(label_map.synthetic(C=4, size=16, seed=2), 100, 90, rounds=1)
    assert got["now"]["pixels_off"] == 0 and got["before"]["pixels_off"] == 0
    assert got["before"]["ms_p50"] > 0 and got["now"]["ms_p50"] > 0 and not got["nearest_fallback_before"]
