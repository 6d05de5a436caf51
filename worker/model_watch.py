"""A worker that serves every model serves the ones imported after it started, too.

Each model has its own Celery queue, and a worker consumes the queues it was started with.
Without this, a model imported into a running stack (``segcam models import``) is accepted
by the gateway, whose store reads follow the import within seconds, but its jobs wait
``queued`` for ever: no worker consumes their queue until one is restarted. Triton's
``--model-control-mode=poll`` is the same idea. A worker started with
``SEGCAM_WORKER_MODELS`` serves exactly those and never runs this.

The thread lives in the worker's parent (no torch, no CUDA): it looks at the model store every
``SEGCAM_MODEL_POLL_S`` and hands each model that appeared, once its default version resolves,
to ``on_new``, which starts consuming its queue (``worker/signals.py``). The pool child loads
the model at its first job, as it loads any version it has not cached. A model is never
dropped: jobs still queued for one whose versions were deleted fail as ``model_unavailable``
instead of waiting for a consumer that will never come.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from shared.model_store import ModelNotFound, ModelStore

log = logging.getLogger("segcam.worker")


def servable(store: ModelStore) -> list[str]:
    """The store's models whose default version resolves: a model with no version yet, or a
    hand-edited manifest that no longer validates, is skipped until it does, rather than
    taking a worker down."""
    out = []
    for name in store.names():
        try:
            store.resolve(name)
        except (ModelNotFound, ValueError) as e:  # ValueError: an aliases file edited by hand
            log.debug("model %s not servable yet: %s", name, e)
            continue
        out.append(name)
    return out


class ModelWatch(threading.Thread):
    def __init__(
        self, store: ModelStore, served: list[str], on_new: Callable[[list[str]], None], interval_s: float
    ) -> None:
        super().__init__(name="segcam-model-watch", daemon=True)
        self.store = store
        self.served = list(served)
        self.on_new = on_new
        self.interval_s = interval_s
        self._halt = threading.Event()

    def poll(self) -> list[str]:
        """The models that appeared since the last look, already handed to ``on_new``."""
        try:
            new = [m for m in servable(self.store) if m not in self.served]
        except OSError as e:  # a store on a volume that went away for a moment: look again later
            log.warning("model store unreadable: %s", e)
            return []
        if new:
            self.on_new(new)
            self.served.extend(new)
            log.info("now serving %s too (imported after this worker started)", ", ".join(new))
        return new

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # a failure to add one queue must not end the watch for good
                log.exception("model watch: could not start serving a new model")

    def stop(self) -> None:
        self._halt.set()
