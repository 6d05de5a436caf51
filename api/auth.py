"""Optional API keys and per-key rate limits.

Keys are configured as sha256 digests, never in clear; a presented key is hashed and
compared with every configured digest in constant time. With keys on, a job belongs to
the key that created it: other keys get 404 for it, as if it did not exist.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass

from fastapi import Depends, Request

from api.deps import Services, services
from api.errors import ApiError


@dataclass(frozen=True)
class Principal:
    owner: str  # a short ID derived from the key's digest; "" when keys are off


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


async def principal(request: Request, svc: Services = Depends(services)) -> Principal:
    if not svc.settings.api_keys_enabled:
        return Principal(owner="")
    key = _presented_key(request)
    if key is None:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            {"WWW-Authenticate": "Bearer"},
        )
    digest = hash_key(key)
    match = ""
    for configured in svc.settings.key_hashes:  # no early exit: the time does not depend on which matched
        if hmac.compare_digest(digest, configured):
            match = configured
    if not match:
        raise ApiError(401, "invalid_api_key", "the API key is not valid", {"WWW-Authenticate": "Bearer"})
    return Principal(owner=match[:16])


def enforce_rate_limit(svc: Services, who: Principal) -> None:
    """Fixed one-minute windows per key; over the limit: 429 with the seconds to the next window."""
    limit = svc.settings.rate_limit_per_minute
    if limit <= 0:
        return
    now = time.time()
    window = int(now // 60)
    key = svc.keys.rate(who.owner or "-", window)
    pipe = svc.redis.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 120)
    count = pipe.execute()[0]
    if count > limit:
        svc.redis.hincrby(svc.keys.metrics(), "rejected|rate_limited|*", 1)
        retry = max(1, math.ceil((window + 1) * 60 - now))
        raise ApiError(
            429,
            "rate_limited",
            f"more than {limit} submissions per minute for this API key; retry in {retry} s",
            {"Retry-After": str(retry)},
        )
