"""A small Python client for the segcam HTTP API (httpx; no torch needed)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

FINAL = {"succeeded", "failed", "cancelled"}
ARTIFACTS = ("mask", "heatmap", "overlay")


class SegcamError(Exception):
    """A 4xx/5xx answer from the API, with its error code and, for 429/503, Retry-After."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
        code, message = err["code"], err["message"]
    except Exception:
        code, message = "http_error", r.text[:200]
    ra = r.headers.get("Retry-After")
    raise SegcamError(r.status_code, code, message, float(ra) if ra and ra.replace(".", "", 1).isdigit() else None)


class SegcamClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

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
        filename: str = "image",
    ) -> dict:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        if not isinstance(image, bytes):
            filename = Path(image).name
        form = {
            k: str(v)
            for k, v in {"model": model, "target_class": target_class, "method": method}.items()
            if v is not None
        }
        r = self.http.post("/v1/jobs", files={"image": (filename, data)}, data=form)
        _raise_for(r)
        return r.json()

    def status(self, job_id: str) -> dict:
        r = self.http.get(f"/v1/jobs/{job_id}")
        _raise_for(r)
        return r.json()

    def wait(self, job_id: str, timeout: float = 300.0, poll_s: float = 0.1) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.status(job_id)
            if job["status"] in FINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f}s")
            time.sleep(poll_s)

    def download(self, job_id: str, name: str) -> bytes:
        r = self.http.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        _raise_for(r)
        return r.content

    def models(self) -> dict:
        r = self.http.get("/v1/models")
        _raise_for(r)
        return r.json()
