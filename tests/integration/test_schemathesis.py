"""Schemathesis against the live OpenAPI schema: no server error, no response off the schema."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


def test_schemathesis_finds_no_server_error_and_no_schema_violation(stack, tmp_path):
    exe = Path(sys.executable).parent / "schemathesis"
    cmd = [str(exe), "run", f"{stack.url}/openapi.json", "--max-examples", "200", "--seed", "7", "--checks", CHECKS,
           "--request-timeout", "30"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = out.stdout[-4000:] + out.stderr[-2000:]
    assert out.returncode == 0, report
    m = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert m, report
    generated, passed = int(m.group(1)), int(m.group(2))
    assert generated >= 1000 and passed == generated, report
    ops = sum(len(methods) for methods in httpx.get(f"{stack.url}/openapi.json").json()["paths"].values())
    assert f"{ops} selected / {ops} total" in out.stdout  # every operation was exercised
