"""``make trace`` on the real stack: every hop a job always crosses shows up in its table.

The tracer wraps functions by name; one the code stops calling (as ``Pipeline.run`` was,
once a batch became ``compute`` then ``finish``) drops its hops from the table without an
error. Only a real trace shows that.
"""

from __future__ import annotations

import subprocess
import sys

from benchmarks.hop_trace import HOPS
from tests.conftest import ROOT

# The hops of the Celery delivery and of a lingering task's claim are alternatives (either
# may carry a job); every other hop is on every job's path.
ALTERNATIVES = ("worker parent", "  of which", "worker: hand-off", "worker child: claim", "worker child: to the",
                "lingering")  # fmt: skip


def test_a_real_trace_times_every_hop_on_a_job_s_path(redis_url, prefix):
    cmd = [sys.executable, "-m", "benchmarks.hop_trace", "--jobs", "5", "--warmup", "1", "--gap-ms", "0",
           "--redis-url", redis_url, "--prefix", prefix, "--worst", "1", "--no-save"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    always = [what.strip() for _, _, what in HOPS if not what.startswith(ALTERNATIVES)]
    missing = [what for what in always if what not in rows]
    assert not missing, f"hops missing from the trace: {missing}\n{out.stdout}"
    assert "worst 1" in out.stdout and "| overhead |" in out.stdout
