"""``python -m worker``: start one Celery worker for one device (prefork pool, concurrency 1).

The device is checked here, in the parent and before any fork: a worker told to use a
GPU that is not there exits with status 2 and says why, instead of serving on the CPU.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from shared import logs
from shared.keys import Keys
from shared.model_store import ModelNotFound, ModelStore
from shared.settings import get_settings
from worker.device import DeviceUnavailable, resolve_device


def build_argv(name: str, queues: list[str], loglevel: str, quiet: bool = False) -> list[str]:
    """The Celery command line every segcam worker runs (one process per device)."""
    argv = [
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        f"--hostname={name}",
        f"--queues={','.join(queues)}",
        "--task-events",
        f"--loglevel={loglevel}",
    ]
    return ["--quiet", *argv] if quiet else argv  # no banner among JSON log lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    ap.add_argument("--name", help="worker name (default: cpu0@HOST or gpu0@HOST)")
    args = ap.parse_args(argv)
    settings = get_settings()
    logs.configure("worker", settings.log_level, settings.log_json)
    try:
        device = resolve_device(settings.device)
    except DeviceUnavailable as e:
        print(f"segcam worker: refusing to start: {e}", file=sys.stderr)
        return 2
    store = ModelStore(settings.model_dir)
    models = settings.served_models or store.names()
    if not models:
        print(f"segcam worker: no models in the model store at {settings.model_dir}", file=sys.stderr)
        return 2
    for m in models:
        try:
            store.resolve(m)
        except ModelNotFound as e:
            print(f"segcam worker: cannot serve '{m}': {e}", file=sys.stderr)
            return 2
    kind = "cpu" if device == "cpu" else "gpu"
    index = device.split(":")[1] if ":" in device else "0"
    name = args.name or f"{kind}{index}@{socket.gethostname()}"
    # Children and signal handlers read the concrete choices from the environment. The models
    # stay unpinned when none were named: such a worker also serves models imported after
    # its start (worker/model_watch.py).
    os.environ["SEGCAM_DEVICE"] = device
    os.environ["SEGCAM_WORKER_NAME"] = name
    get_settings.cache_clear()

    from worker.app import app  # imported late: settings above must be in place first

    keys = Keys(settings.key_prefix)
    app.worker_main(build_argv(name, [keys.celery_queue(m) for m in models], settings.log_level, settings.log_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
