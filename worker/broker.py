"""The worker's broker transport: kombu's Redis transport, with one Redis client per channel.

kombu builds a new ``redis.Redis`` for every operation it does through ``conn_or_acquire``:
the unacked record written before each job reaches the pool child, every ack, every event
publish. redis-py 8's constructor costs about 0.15 ms on this machine's cold path from
message to task (measured in docs/performance.md). A client holds no connection of its own
(its pool does), so one per pool serves them all; a channel that rebuilds its pool after a
connection error gets a new client with it. The worker's app names it in
``broker_transport`` (an explicit transport wins over the URL's scheme in kombu).
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client = None

    def _create_client(self, asynchronous: bool = False):
        if asynchronous:  # the BRPOP / pub/sub client: kombu keeps that one itself
            return super()._create_client(asynchronous=True)
        pool = self.pool
        if self._sync_client is None or self._sync_client.connection_pool is not pool:
            self._sync_client = super()._create_client()
        return self._sync_client


class Transport(kombu_redis.Transport):
    Channel = Channel
