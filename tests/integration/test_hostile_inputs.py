"""Bad input gets a clear 4xx naming the problem, never a 5xx or a crashed worker; odd but
valid images are processed. Every case of tests/corpus.py, end to end on the real stack."""

from __future__ import annotations

import io
import socket
import time

import httpx
import pytest
from PIL import Image

from tests.corpus import CASES, PNG, Case
from tests.integration.conftest import UPLOAD_CAP
from tests.integration.procs import wait_final

pytestmark = pytest.mark.integration


def send(url: str, case: Case) -> httpx.Response:
    if case.raw is not None:
        return httpx.post(f"{url}/v1/jobs", content=case.raw, headers={"content-type": case.content_type}, timeout=60)
    return httpx.post(f"{url}/v1/jobs", files=case.files, data=case.data, timeout=60)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_case(stack, name):
    case = CASES[name]
    r = send(stack.url, case)
    assert r.status_code < 500, r.text
    assert r.status_code == case.status, r.text
    if case.code is not None:
        err = r.json()["error"]
        assert err["code"] == case.code and err["message"], err
        return
    final = wait_final(stack.url, r.json()["id"], timeout=120)
    assert final["status"] == "succeeded", final
    assert (final["result"]["image"]["width"], final["result"]["image"]["height"]) == case.size
    overlay = httpx.get(f"{stack.url}/v1/jobs/{final['id']}/artifacts/overlay").content
    assert Image.open(io.BytesIO(overlay)).size == case.size


def test_corpus_is_big_enough():
    assert len(CASES) >= 25


def _raw_request(port: int, head: bytes, body_parts: list[bytes], read_timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head)
        for part in body_parts:
            try:
                s.sendall(part)
            except OSError:
                break  # the server already answered and closed
        chunks = []
        try:
            while data := s.recv(65536):
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks) and b"}}" in b"".join(chunks):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_declared_oversize_upload_is_refused_before_the_body_is_read(stack):
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {UPLOAD_CAP * 10}\r\n\r\n"
    ).encode()
    t0 = time.monotonic()
    reply = _raw_request(stack.api_port, head, [])  # not one byte of the body is sent
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"upload_too_large" in reply and time.monotonic() - t0 < 5


def test_streamed_upload_over_the_cap_is_cut_off_while_streaming(stack):
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )

    def framed(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    chunk = b"\x89PNG" + b"x" * 65532
    # a valid multipart start, then 1.5x the cap of file bytes, and the body never ends:
    # the answer must come anyway
    parts = [framed(part)] + [framed(chunk)] * (int(UPLOAD_CAP * 1.5) // len(chunk))
    reply = _raw_request(stack.api_port, head, parts)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_lying_content_length_is_a_4xx_not_a_hang_or_500(stack):
    body = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n--b--\r\n"
    )
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body) // 3}\r\nConnection: close\r\n\r\n"
    ).encode()
    reply = _raw_request(stack.api_port, head, [body])
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:300]


def test_a_client_that_hangs_up_mid_upload_is_logged_in_one_line_not_as_a_server_error(stack):
    """Mobile links drop and users cancel: that is no 500 and no traceback in the gateway's log."""
    log = stack.log_dir / "api.log"
    before = log.read_text()
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", stack.api_port), timeout=10) as s:
        s.sendall(head + b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + PNG[:50])
        time.sleep(0.2)
    new = ""
    deadline = time.monotonic() + 10
    while "client went away" not in new and time.monotonic() < deadline:
        time.sleep(0.1)
        new = log.read_text()[len(before) :]
    assert "client went away" in new, new
    assert "Traceback" not in new and "unhandled error" not in new, new
    assert httpx.get(f"{stack.url}/healthz").status_code == 200


def test_after_the_whole_corpus_the_workers_still_serve(stack):
    r = httpx.post(f"{stack.url}/v1/jobs", files={"image": ("a.png", PNG)})
    assert wait_final(stack.url, r.json()["id"])["status"] == "succeeded"
    assert httpx.get(f"{stack.url}/readyz").status_code == 200
