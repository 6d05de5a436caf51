"""The A/B split itself, with a seeded generator: the integration test only checks the API uses it."""

from __future__ import annotations

import random
from collections import Counter

from shared import traffic

TABLE = {"production": 90, "candidate": 10}


def test_random_split_follows_the_weights():
    rng = random.Random(7)
    counts = Counter(traffic.pick(TABLE, rng=rng) for _ in range(100_000))
    assert set(counts) == {"production", "candidate"}
    assert abs(counts["candidate"] / 100_000 - 0.10) < 0.005  # sd 0.00095


def test_zero_weights_are_never_picked_and_an_empty_table_picks_nothing():
    rng = random.Random(1)
    picks = {traffic.pick({"a": 0, "b": 3, "c": 0}, rng=rng) for _ in range(1000)}
    assert picks == {"b"}
    assert traffic.pick({}) is None and traffic.pick({"a": 0}) is None


def test_a_routing_key_always_lands_on_one_variant_and_keys_spread_by_weight():
    assert len({traffic.pick(TABLE, "user-17") for _ in range(50)}) == 1
    counts = Counter(traffic.pick(TABLE, f"user-{i}") for i in range(20_000))
    assert abs(counts["candidate"] / 20_000 - 0.10) < 0.01  # sd 0.0021
