"""The benchmark's raw-socket client: what it sends is a valid form, and it reads keep-alive answers."""

from __future__ import annotations

import gc
import json
import threading
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from benchmarks.loadgen import RawClient, multipart_request, steady_heap


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
