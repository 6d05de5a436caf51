"""A Python client for the segcam HTTP API (httpx only; no torch).

    with SegcamClient("http://localhost:8000") as c:
        job = c.submit("photo.png", method="gradcam++")
        done = c.wait(job["id"])              # SSE, or long-polling where SSE is not possible
        open("mask.png", "wb").write(c.download(job["id"], "mask"))

Errors are exceptions with the API's code and message: ``BadRequest`` (4xx), ``RateLimited``
(429, with ``retry_after``), ``ServerError`` (5xx). ``submit`` honours ``Retry-After`` on 429
and 503 by waiting and trying again, up to ``retries`` times.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

FINAL = {"succeeded", "failed", "cancelled"}
# A request that may or may not have reached the gateway: refused, cut, or unanswered in time.
LOST = (httpx.NetworkError, httpx.RemoteProtocolError, httpx.TimeoutException)
ARTIFACTS = ("mask", "heatmap", "overlay")
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg"}


def artifact_file(job: dict, name: str) -> str:
    """The file name for artifact ``name`` of a succeeded ``job``: its suffix from the result's
    ``media_types`` (a JPEG upload's overlay is a JPEG by default), so a viewer opens it."""
    media = ((job.get("result") or {}).get("media_types") or {}).get(name, "image/png")
    return name + SUFFIXES.get(media, ".png")


class SegcamError(Exception):
    """An error answer from the API."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class BadRequest(SegcamError):
    """4xx: the request was wrong (or not allowed); retrying it unchanged will not help."""


class RateLimited(BadRequest):
    """429: the queue is full or the key's rate limit is reached; retry after ``retry_after`` s."""


class ServerError(SegcamError):
    """5xx: the service could not answer (503: Redis or the queue is unreachable)."""


def raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
        code, message = err["code"], err["message"]
    except Exception:
        code, message = "http_error", r.text[:200]
    ra = r.headers.get("Retry-After")
    retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
    raise error_for(r.status_code, code, message, retry_after)


def error_for(status: int, code: str, message: str, retry_after: float | None = None) -> SegcamError:
    cls = RateLimited if status == 429 else BadRequest if status < 500 else ServerError
    return cls(status, code, message, retry_after)


class Outage:
    """Failures in a row, as a restarting gateway gives them: waited out with a growing pause,
    for up to ``limit_s`` seconds from the first."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.since: float | None = None
        self.failures = 0

    def too_long(self) -> bool:
        """Count one more failure; True once they have gone on for ``limit_s``."""
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        self.failures += 1
        return now - self.since >= self.limit_s

    def backoff_s(self) -> float:
        return min(0.25 * 2**self.failures, 4.0)


class SegcamClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.answered = False  # has a gateway ever taken a connection from this client? then a refusal is a restart
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers=headers,
            transport=transport,
            event_hooks={"response": [self._answered]},
        )

    def _answered(self, response: httpx.Response) -> None:
        self.answered = True

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SegcamClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(
        self,
        image: str | Path | bytes,
        model: str | None = None,
        target_class: str | int | None = None,
        method: str | None = None,
        priority: str | None = None,
        callback_url: str | None = None,
        routing_key: str | None = None,
        idempotency_key: str | None = None,
        filename: str = "image",
        retries: int = 3,
        wait: float = 0,
        reconnect_s: float = 30.0,
    ) -> dict:
        """The accepted job (``id``, ``status``, ``position``); with ``wait`` seconds, the final
        job itself when it ends within them (one request instead of submit + wait).

        Every submission carries an ``Idempotency-Key`` (a fresh one unless given), so one whose
        answer was lost (the gateway restarted, the connection dropped) is sent again for up to
        ``reconnect_s`` seconds in a row and gets back the job it made, never a second job. A
        connection refused before any gateway ever answered this client is raised at once."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        if not isinstance(image, bytes):
            filename = Path(image).name
        fields = {
            "model": model,
            "target_class": target_class,
            "method": method,
            "priority": priority,
            "callback_url": callback_url,
            "routing_key": routing_key,
        }
        form = {k: str(v) for k, v in fields.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        refusals = 0
        while True:
            r = self._send(
                lambda: self.http.post(
                    "/v1/jobs",
                    files={"image": (filename, data)},
                    data=form,
                    headers=headers,
                    params={"wait": wait} if wait else None,
                    timeout=wait + 30,
                ),
                reconnect_s,
            )
            try:
                raise_for(r)
                return r.json()
            except (RateLimited, ServerError) as e:
                if refusals == retries or (isinstance(e, ServerError) and e.status != 503):
                    raise
                time.sleep(min(e.retry_after or 2.0 * 2**refusals, 60.0))
                refusals += 1

    def _send(self, request: Callable[[], httpx.Response], reconnect_s: float) -> httpx.Response:
        """``request()``, made again while its answer is lost for up to ``reconnect_s`` s in a row:
        safe for a submission with its Idempotency-Key and for reads."""
        outage = Outage(reconnect_s)
        while True:
            try:
                return request()
            except LOST as e:
                if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
                    if not self.answered:
                        raise  # nothing ever answered here: a wrong URL or a stack not started, said at once
                else:
                    self.answered = True  # a gateway took the connection, then cut it: a restart
                if outage.too_long():
                    raise
                time.sleep(outage.backoff_s())

    def status(self, job_id: str, wait: float = 0) -> dict:
        r = self.http.get(f"/v1/jobs/{job_id}", params={"wait": wait} if wait else None, timeout=wait + 30)
        raise_for(r)
        return r.json()

    def events(self, job_id: str, timeout: float = 600.0) -> Iterator[dict]:
        """Each status change of the job as the server pushes it (SSE), ending with the final one.
        A stream that cannot go on ends with an ``error`` event, raised as the answer it stands
        for: ``BadRequest`` 404 (the job expired), ``ServerError`` 503 (Redis unreachable)."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(30, read=timeout)) as r:
            if r.status_code >= 400:
                r.read()
                raise_for(r)
            event = "message"
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "error":
                    err = json.loads(line[6:]).get("error") or {}
                    code, message = err.get("code", "http_error"), err.get("message", "")
                    status = 404 if code == "job_not_found" else 503 if code == "backend_unavailable" else 500
                    raise error_for(status, code, message)
                elif line.startswith("data: "):
                    yield json.loads(line[6:])

    def wait(
        self,
        job_id: str,
        timeout: float = 600.0,
        on_update: Callable[[dict], None] | None = None,
        reconnect_s: float = 30.0,
    ) -> dict:
        """Block until the job is final, following it by SSE, or by long-polling if SSE fails.

        The job lives in Redis, not in the gateway: one that is restarted or replaced (its
        stream ends, its port stops answering, or it answers 503 for a moment) is waited for,
        up to ``reconnect_s`` seconds in a row, rather than given up with the job."""
        deadline = time.monotonic() + timeout
        try:
            for update in self.events(job_id, timeout=timeout):
                if on_update:
                    on_update(update)
                if update["status"] in FINAL:
                    return update
        except (httpx.HTTPError, json.JSONDecodeError):
            pass  # a proxy that buffers or cuts streams, or a gateway shutting down: poll instead
        except ServerError as e:
            if e.status != 503:
                raise  # Redis unreachable: the polls below wait it out as they would a restart
        outage = Outage(reconnect_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} not finished after {timeout:.0f}s")
            try:
                job = self.status(job_id, wait=min(left, 30.0))
            except (httpx.TransportError, ServerError) as e:
                if isinstance(e, ServerError) and e.status != 503:
                    raise
                if outage.too_long():
                    raise
                time.sleep(min(outage.backoff_s(), left))
                continue
            outage = Outage(reconnect_s)
            if on_update:
                on_update(job)
            if job["status"] in FINAL:
                return job

    def cancel(self, job_id: str) -> dict:
        r = self.http.delete(f"/v1/jobs/{job_id}")
        raise_for(r)
        return r.json()

    def download(self, job_id: str, name: str, reconnect_s: float = 30.0) -> bytes:
        r = self._send(lambda: self.http.get(f"/v1/jobs/{job_id}/artifacts/{name}"), reconnect_s)
        raise_for(r)
        return r.content

    def models(self) -> dict:
        r = self.http.get("/v1/models")
        raise_for(r)
        return r.json()
