"""Completion webhooks: scheduling, signing, and the address check both sides apply.

A job's final status is posted to its ``callback_url`` by a webhook worker
(``python -m worker.webhooks``), never by the GPU workers, so a slow receiver costs no
GPU time. The body is the job as ``GET /v1/jobs/{id}`` shows it; the request carries

    X-Segcam-Timestamp: <unix seconds>
    X-Segcam-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

Receivers recompute the HMAC over the raw body and reject stale timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

from shared.keys import Keys

TASK_WEBHOOK = "segcam.webhook"


class UnsafeTarget(ValueError):
    pass


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, header: str, now: float, tolerance_s: float = 300) -> bool:
    """What a receiver does: constant-time compare, and refuse timestamps too far from now."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, ts, body), header)


def check_url(url: str, allow_private: bool, resolve: bool = True) -> None:
    """Refuse non-HTTP URLs and, unless allowed, addresses inside the deployment (SSRF)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("callback_url must be an http(s) URL with a host")
    if allow_private:
        return
    try:
        addrs = [ipaddress.ip_address(parts.hostname)]
    except ValueError:
        if not resolve:
            return
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
        except OSError as e:
            raise UnsafeTarget(f"cannot resolve {parts.hostname}: {e}") from None
        addrs = [ipaddress.ip_address(i[4][0]) for i in infos]
    for a in addrs:
        if a.is_private or a.is_loopback or a.is_link_local or a.is_reserved or a.is_multicast or a.is_unspecified:
            raise UnsafeTarget(f"callback_url resolves to a non-public address ({a})")


def schedule(celery, keys: Keys, job_id: str) -> None:
    """Queue the delivery of a job's final status (by task name)."""
    celery.send_task(TASK_WEBHOOK, args=[job_id], queue=keys.webhook_queue())
