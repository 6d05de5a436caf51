"""The worker's broker transport reuses one Redis client per channel pool, and the worker uses it."""

from __future__ import annotations

from kombu import Connection

from worker import broker


def test_the_worker_channel_keeps_one_sync_client_per_pool(redis_url):
    broker.install()
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        assert isinstance(channel, broker.Channel)
        first = channel._create_client()
        assert channel._create_client() is first  # not a new redis.Redis per operation
        assert first.ping()
        assert channel._create_client(asynchronous=True) is not first  # BRPOP's client stays kombu's own
        channel._disconnect_pools()  # what kombu does after a connection error
        again = channel._create_client()
        assert again is not first and again.connection_pool is channel.pool and again.ping()


def test_the_worker_app_installs_it():
    from worker.app import app

    with app.connection_for_read() as conn:  # not connected: only which transport it would use
        assert isinstance(conn.transport, broker.Transport) and conn.transport.Channel is broker.Channel
