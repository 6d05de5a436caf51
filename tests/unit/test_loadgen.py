"""The benchmark's clients: the raw-socket client sends a valid form and reads keep-alive
answers; the closed loop's window leaves each client's first, cold job out of the figures."""

from __future__ import annotations

import gc
import json
import math
import threading
import time
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.loadgen import RawClient, Window, multipart_request, steady_heap
from benchmarks.run import closed_loop


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn answers

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        seen = {"path": self.path, "ctype": self.headers["Content-Type"], "bytes": len(body),
                "has_image": b'name="image"' in body and body.count(b"\x89PNG") == 1,
                "model": b'name="model"\r\n\r\ndeeplab\r\n' in body, "peer": self.client_address[1]}  # fmt: skip
        out = json.dumps(seen).encode()
        self.send_response(201 if "wait" in self.path else 202)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args) -> None:
        pass


def test_raw_client_sends_the_form_with_its_query_and_reuses_the_connection():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    image = b"\x89PNG" + bytes(range(256)) * 300  # larger than one recv
    try:
        with RawClient(url) as c:
            first = c.send(multipart_request(f"{url}/v1/jobs?wait=30", image, {"model": "deeplab"}))
            second = c.send(multipart_request(f"{url}/v1/jobs", image))
    finally:
        server.shutdown()
    status, body = first
    got = json.loads(body)
    assert status == 201 and got["path"] == "/v1/jobs?wait=30" and got["has_image"] and got["model"]
    assert got["ctype"].startswith("multipart/form-data; boundary=") and got["bytes"] > len(image)
    status, body = second
    again = json.loads(body)
    assert status == 202 and again["path"] == "/v1/jobs" and not again["model"]
    assert again["peer"] == got["peer"]  # one keep-alive connection for both


def test_a_steady_heap_freezes_what_came_before_and_still_collects_what_the_window_makes():
    class Node:
        pass

    gc.unfreeze()  # an app built by an earlier test froze its start-up heap (api/main.py): start from none
    before, callbacks = gc.get_freeze_count(), len(gc.callbacks)
    old = Node()
    old.self = old  # a cycle made before the window: frozen, so full collections skip it
    with steady_heap() as stats:
        assert gc.get_freeze_count() > before
        new = Node()
        new.self = new
        gone = weakref.ref(new)
        del new
        gc.collect()
        assert gone() is None  # made inside the window: collected as usual
    assert stats["collections"] >= 1 and stats["max_pause_ms"] > 0
    assert gc.get_freeze_count() == before and len(gc.callbacks) == callbacks


def test_a_window_opens_once_every_user_has_arrived_and_a_missing_user_breaks_it():
    w = Window(2, 0.5)
    first = threading.Thread(target=w.arrive)
    first.start()
    time.sleep(0.1)
    assert math.isnan(w.start)  # one of two users in: not open yet
    w.arrive()
    first.join(5)
    assert w.stop - w.start == pytest.approx(0.5)
    with pytest.raises(threading.BrokenBarrierError):
        Window(2, 1.0, timeout=0.1).arrive()


COLD_S = 0.15


class SlowFirstJob(BaseHTTPRequestHandler):
    """Answers ``POST /v1/jobs?wait`` with a finished job (2 ms of compute), the first request
    on each connection after ``COLD_S``: a cold first job."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if not getattr(self, "served", False):
            self.served = True
            time.sleep(COLD_S)
        explanation = {"class_id": 1, "peak": {"x": 1, "y": 2}, "energy_in_mask": 0.5}
        result = {"timings_ms": {"total_ms": 2.0, "queue_wait_ms": 0.1}, "batch_size": 1, "explanation": explanation}
        job = {"id": "j", "status": "succeeded", "result": result}
        out = json.dumps(job).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("raw", [False, True])
def test_the_closed_loop_times_no_client_s_first_job_and_reports_it_apart(raw):
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowFirstJob)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        res = closed_loop(f"http://127.0.0.1:{server.server_address[1]}", [b"\x89PNG"], "m", 2, 0.4, raw=raw)
    finally:
        server.shutdown()
    assert res["completed"] > 4 and res["errors"] == 0
    assert res["latency_ms"]["p99"] < COLD_S * 1000  # no cold job inside the window
    assert len(res["first_job_overhead_ms"]) == 2  # one per client, each the cold one
    assert min(res["first_job_overhead_ms"]) >= COLD_S * 1000 - 2.0
