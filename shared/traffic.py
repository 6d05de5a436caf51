"""A/B traffic split: which version serves a job that names a model without one.

A model's traffic table (``traffic.json`` in the store) maps aliases or versions to integer
weights, e.g. ``{"production": 90, "candidate": 10}``. A job with a routing key (its
``routing_key`` field, else its ``Idempotency-Key``) always lands on the same variant, so a
client's retries and a user's session see one version; other jobs are split at random.
"""

from __future__ import annotations

import hashlib
import random


def bucket(key: str) -> float:
    """A stable point in [0, 1) for a routing key."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def pick(table: dict[str, int], routing_key: str | None = None, rng: random.Random | None = None) -> str | None:
    total = sum(w for w in table.values() if w > 0)
    if total <= 0:
        return None
    point = bucket(routing_key) if routing_key else (rng or random).random()
    acc = 0.0
    for variant, weight in sorted(table.items()):
        if weight <= 0:
            continue
        acc += weight / total
        if point < acc:
            return variant
    return max(table, key=table.get)
