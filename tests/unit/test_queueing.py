from __future__ import annotations

from api.queueing import retry_after_s


def test_retry_after_follows_the_measured_drain_rate():
    assert retry_after_s(depth=100, max_depth=100, drain_per_s=2.0) == 1
    assert retry_after_s(depth=119, max_depth=100, drain_per_s=2.0) == 10
    assert retry_after_s(depth=100, max_depth=100, drain_per_s=0.05) == 20
    assert retry_after_s(depth=100, max_depth=100, drain_per_s=0.0) == 10  # nothing measured yet
    assert retry_after_s(depth=10**9, max_depth=1, drain_per_s=0.001) == 3600  # capped
