"""One Redis client per process, with timeouts short enough that an outage is an error, not a hang."""

from __future__ import annotations

import os

import redis

from shared.settings import Settings

# Redis failures that pass: unreachable or slow (a restart, a network blip, loading its data),
# memory full (maxmemory with noeviction refuses writes until keys expire or are freed), or a
# failed-over primary now read-only. What a worker met one of these doing is worth running again;
# any other Redis error is a bug in a command, and would fail the same way again.
OUTAGES: tuple[type[redis.RedisError], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
)

_clients: dict[tuple[int, str], redis.Redis] = {}


def get_redis(settings: Settings) -> redis.Redis:
    # Keyed by PID: a forked worker child must not share its parent's sockets.
    key = (os.getpid(), settings.redis_url)
    client = _clients.get(key)
    if client is None:
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_socket_timeout_s,
            socket_connect_timeout=settings.redis_connect_timeout_s,
            health_check_interval=30,
        )
        _clients[key] = client
    return client
