"""Pay the gateway's first-request costs at start-up, not in a user's request.

A fresh API process meets its first submission with work that later ones skip: Pillow imports
its format plugins on the first image it opens, FastAPI and the multipart parser warm their
own lazy paths, the model store reads its manifests from disk, Celery builds its first
message and the event hub makes its subscription. Together about 15 ms on a 2-core VM
(docs/performance.md, tenth round): the slowest answer of a fresh deployment, and of every
API replica that a scale-up adds.

The warm-up runs those paths before the app takes traffic: Pillow's plugins and one header
sniff, one read of the model store, one Celery message built (and not sent), the event hub's
subscription started (in the background: a gateway whose Redis is down still starts at
once), then one submission through the app itself, in process, that the form check refuses
(an unknown field) before anything is stored or queued.
"""

from __future__ import annotations

import base64
import logging

from PIL import Image

from api.deps import Services
from api.events import EventHub
from shared.celery_app import TASK_SEGMENT, task_message
from shared.imaging import inspect
from shared.model_store import ModelNotFound

log = logging.getLogger("segcam.api")

# A 1x1 RGB PNG, spelled out so that making it needs no Pillow encoder.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgYGAAAAAEAAH2FzhVAAAAAElFTkSuQmCC"
)
BOUNDARY = "segcam-warm-up"
# ``warm_up`` is no form field: the form check answers 422 unknown_field before the model,
# the image or Redis are touched, so the warm-up can never queue a job.
REFUSED_FIELD = "warm_up"


def form(fields: dict[str, str]) -> bytes:
    """A multipart submission of the 1x1 PNG with ``fields``, framed by ``BOUNDARY``."""
    b = b"--" + BOUNDARY.encode()
    parts = [b + b'\r\nContent-Disposition: form-data; name="image"; filename="warm-up.png"\r\n'
             b"Content-Type: image/png\r\n\r\n" + PNG_1X1 + b"\r\n"]  # fmt: skip
    parts += [b + f'\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    return b"".join(parts) + b + b"--\r\n"


def refused_submission() -> bytes:
    return form({REFUSED_FIELD: "1"})


async def call(app, method: str, path: str, body: bytes = b"", headers: list | None = None) -> tuple[int, bytes]:
    """One request through the ASGI app in this process (no socket, no server): its status and body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"warm-up"), (b"content-length", str(len(body)).encode()), *(headers or [])],
        "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
    }  # fmt: skip
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    status, out = 0, []

    async def receive():
        return pending.pop() if pending else {"type": "http.disconnect"}

    async def send(message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            out.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(out)


async def warm_up(app, svc: Services, hub: EventHub | None = None) -> int:
    """Runs the first-request paths; returns the refused submission's status (422 when the
    form check refused it, as it must). Never raises: a warm-up that fails leaves a cold
    first request, not a gateway that does not start."""
    try:
        Image.init()  # every format plugin now, not on the first upload of each format
        inspect(PNG_1X1, max_pixels=svc.settings.max_pixels, max_side=svc.settings.max_side,
                allowed_formats=svc.settings.allowed_formats)  # fmt: skip
        svc.models.names()
        try:
            svc.models.resolve(svc.settings.default_model)
        except ModelNotFound:
            pass  # an empty store: submissions will say so
        task_message(svc.celery, TASK_SEGMENT, "0" * 32, "warm-up", {"model": "warm-up", "job_id": "0" * 32})
        if hub is not None:
            hub.start()  # the first ``?wait`` or SSE request finds the subscription made
        content_type = f"multipart/form-data; boundary={BOUNDARY}".encode()
        status, _ = await call(app, "POST", "/v1/jobs", refused_submission(), [(b"content-type", content_type)])
    except Exception as e:  # a warm-up must never stop the gateway
        log.warning("warm-up skipped: %s", e)
        return 0
    if status != 422:
        log.warning("warm-up submission answered %s, not 422", status)
    return status
