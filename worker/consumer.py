"""segcam's Celery consumer: task events leave after the job reaches the pool child, not before.

With the event loop, Celery buffers task events and flushes them at the top of the next
loop turn: one Redis PUBLISH per event, and the "task-received" one runs before the turn's
I/O that hands the job to the pool child, so each job waited for it (about 0.5 ms of the
parent's time on a 2-core box, measured in docs/performance.md). Flushing on a short timer
instead lets the hand-off go first; Flower still gets every event, a millisecond later.
"""

from __future__ import annotations

from celery.worker.consumer import Consumer as CeleryConsumer


class Consumer(CeleryConsumer):
    flush_delay_s = 0.001
    _flush_scheduled = False

    def on_send_event_buffered(self) -> None:
        if self.hub is None or self._flush_scheduled:
            return
        self._flush_scheduled = True
        self.hub.call_later(self.flush_delay_s, self._flush_later)

    def _flush_later(self) -> None:
        self._flush_scheduled = False
        self._flush_events()
