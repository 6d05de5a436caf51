"""benchmarks.idempotency_cost sends what it says: one request with a fresh key, one without."""

from __future__ import annotations

import h11

from benchmarks.idempotency_cost import image_64kb, keyed
from benchmarks.loadgen import multipart_request


def parse(raw: bytes) -> tuple[dict[bytes, bytes], bytes]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    req, body = conn.next_event(), b""
    while isinstance(ev := conn.next_event(), h11.Data):
        body += ev.data
    assert isinstance(req, h11.Request) and isinstance(ev, h11.EndOfMessage)
    return dict(req.headers), body


def test_a_keyed_request_carries_a_fresh_key_and_the_same_body():
    base = multipart_request("http://127.0.0.1:1/v1/jobs", image_64kb())
    plain_headers, plain_body = parse(base)
    a_headers, a_body = parse(keyed(base))
    b_headers, _ = parse(keyed(base))
    assert b"idempotency-key" not in plain_headers and a_body == plain_body
    assert len(a_headers[b"idempotency-key"]) == 32 and a_headers[b"idempotency-key"] != b_headers[b"idempotency-key"]
    assert 60_000 < len(image_64kb()) < 70_000
