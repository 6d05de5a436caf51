"""Which workers are alive and what they serve: both halves of the heartbeat protocol.

A worker's parent process refreshes ``{prefix}:worker:{name}`` (its description, with a
TTL) and its score in the ``{prefix}:workers`` sorted set (last beat time). Readers take
the names beaten recently from the sorted set, so they never SCAN the keyspace.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import redis

from shared.keys import Keys

log = logging.getLogger("segcam.presence")


class Heartbeat(threading.Thread):
    def __init__(self, client: redis.Redis, keys: Keys, name: str, payload: dict, interval_s: float) -> None:
        super().__init__(name="segcam-heartbeat", daemon=True)
        self.client = client
        self.keys = keys
        self.worker = name
        self.description = {**payload, "name": name}
        self.interval_s = interval_s
        self._halt = threading.Event()

    def update(self, **fields) -> None:
        """Change what the worker says of itself (the models it serves), and say it now rather
        than at the next beat."""
        self.description = {**self.description, **fields}
        self.beat()

    def beat(self) -> None:
        ttl_s = self.interval_s * 3
        now = time.time()
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.keys.worker(self.worker), json.dumps(self.description), px=int(ttl_s * 1000))
            pipe.zadd(self.keys.workers(), {self.worker: now})
            pipe.zremrangebyscore(self.keys.workers(), "-inf", now - 10 * ttl_s)
            pipe.execute()
        except redis.RedisError as e:
            log.warning("heartbeat failed: %s", e)

    def run(self) -> None:
        self.beat()
        while not self._halt.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        self._halt.set()
        try:
            self.client.delete(self.keys.worker(self.worker))
            self.client.zrem(self.keys.workers(), self.worker)
        except redis.RedisError:
            pass


def live_workers(client: redis.Redis, keys: Keys) -> list[dict]:
    """Descriptions of the workers whose heartbeat has not expired, by name."""
    names = [n.decode() for n in client.zrange(keys.workers(), 0, -1)]
    if not names:
        return []
    found = client.mget([keys.worker(n) for n in names])
    return sorted((json.loads(v) for v in found if v), key=lambda w: w["name"])
