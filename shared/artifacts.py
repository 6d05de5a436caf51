"""Image bytes in Redis: the upload a worker reads and the images it writes.

Blobs live under their own keys with a TTL and never inside a Celery message or the
result backend, which would publish the whole value on every result and base64 it.
"""

from __future__ import annotations

import redis

from shared.keys import Keys
from shared.schemas import ARTIFACT_NAMES

PNG = "image/png"
JPEG = "image/jpeg"


class ArtifactStore:
    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int) -> None:
        self.r = client
        self.keys = keys
        self.ttl_s = ttl_s

    def stage(self, pipe, job_id: str, artifacts: dict[str, bytes]) -> None:
        """Add the writes to ``pipe``, so they travel with the job's completion in one round trip."""
        unknown = set(artifacts) - set(ARTIFACT_NAMES)
        if unknown:
            raise ValueError(f"unknown artifact names: {sorted(unknown)}")
        for name, data in artifacts.items():
            pipe.set(self.keys.artifact(job_id, name), data, ex=self.ttl_s)

    def put(self, job_id: str, artifacts: dict[str, bytes]) -> None:
        pipe = self.r.pipeline(transaction=True)
        self.stage(pipe, job_id, artifacts)
        pipe.execute()

    def get(self, job_id: str, name: str) -> bytes | None:
        if name not in ARTIFACT_NAMES:
            return None
        return self.r.get(self.keys.artifact(job_id, name))


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def media_type(data: bytes) -> str:
    """What an artifact's bytes are, from the bytes: the worker makes PNGs, and JPEG overlays."""
    return JPEG if is_jpeg(data) else PNG
