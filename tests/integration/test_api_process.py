"""The gateway process itself: what it does when it cannot serve."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from stack.local import API_CMD, python_cmd
from tests.conftest import ROOT


def test_an_api_whose_port_is_taken_exits_non_zero_promptly(redis_url, prefix, tmp_path):
    """Under ``segcam up``, compose or systemd a gateway that cannot bind must die so that it is
    reported or restarted; it used to hang for ever after uvicorn's bind error, deaf to SIGTERM,
    because its event reader swallowed the shutdown's cancellation."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix,
               "SEGCAM_API_HOST": "127.0.0.1", "SEGCAM_API_PORT": str(port)}  # fmt: skip
        t0 = time.monotonic()
        with open(tmp_path / "api.log", "wb") as log:
            p = subprocess.Popen(python_cmd(API_CMD), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                rc = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                log_text = (tmp_path / "api.log").read_text()
                raise AssertionError(f"the API still ran 30 s after failing to bind:\n{log_text}") from None
        out = (tmp_path / "api.log").read_text()
        assert rc != 0, out
        assert "address already in use" in out.lower() or "error while attempting to bind" in out.lower(), out
        assert time.monotonic() - t0 < 30
