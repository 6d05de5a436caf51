"""The worker's broker transport reuses one Redis client per channel pool, and the worker uses it."""

from __future__ import annotations

from kombu import Connection

from worker import broker


def test_the_worker_channel_keeps_one_sync_client_per_pool(redis_url):
    with Connection(redis_url, transport="worker.broker:Transport") as conn:
        channel = conn.default_channel
        assert isinstance(channel, broker.Channel)
        first = channel._create_client()
        assert channel._create_client() is first  # not a new redis.Redis per operation
        assert first.ping()
        assert channel._create_client(asynchronous=True) is not first  # BRPOP's client stays kombu's own
        channel._disconnect_pools()  # what kombu does after a connection error
        again = channel._create_client()
        assert again is not first and again.connection_pool is channel.pool and again.ping()


def test_the_worker_app_uses_it_whatever_was_resolved_before():
    from kombu.transport import get_transport_cls

    assert get_transport_cls("redis") is not broker.Transport  # kombu's own, cached for redis:// URLs
    from worker.app import app

    for conn in (app.connection_for_read(), app.connection_for_write()):  # not connected: which transport only
        with conn:
            assert type(conn.transport) is broker.Transport and conn.transport.Channel is broker.Channel
