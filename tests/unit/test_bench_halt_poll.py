"""benchmarks.halt_poll_ab changes a host-wide kernel setting: it must refuse where it cannot
compare anything, and put the original value back whatever happens to the run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from benchmarks import halt_poll_ab


def test_a_host_without_haltpoll_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(halt_poll_ab, "idle_driver", lambda: {"cpuidle": "intel_idle"})
    assert halt_poll_ab.main(["--rounds", "1"]) == 2
    assert "not haltpoll" in capsys.readouterr().err


def test_the_original_value_comes_back_when_a_round_fails(monkeypatch, tmp_path):
    param = tmp_path / "guest_halt_poll_ns"
    param.write_text("0\n")
    written = []

    class Bench:
        def __init__(self, _args):
            self.imgs = {"demo": []}

        def segcam(self, models):
            written.append(param.read_text())
            raise RuntimeError("the stack did not start")

        def close(self):
            written.append("closed")

    monkeypatch.setattr(halt_poll_ab, "PARAM", param)
    monkeypatch.setattr(halt_poll_ab, "idle_driver", lambda: {"cpuidle": "haltpoll", "guest_halt_poll_ns": 0})
    monkeypatch.setattr(halt_poll_ab.run, "Bench", Bench)
    with pytest.raises(RuntimeError, match="did not start"):
        halt_poll_ab.main(["--values", "200000,0"])
    assert written == ["200000", "closed"]  # the first value was in force for the round
    assert param.read_text() == "0"


def _stat(pid: int | str) -> list[str]:
    """State, parent PID, ... of a process from /proc (empty once it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def _alive(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"])


def test_spinners_run_at_idle_priority_and_are_gone_after_a_failure():
    pids = []
    with pytest.raises(RuntimeError, match="round failed"), halt_poll_ab.spinners(2) as procs:
        pids = [p.pid for p in procs]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(_idle(p) for p in pids):
            time.sleep(0.05)  # each sets its own policy once Python has started
        assert all(_idle(p) for p in pids)
        raise RuntimeError("round failed")
    assert pids and not any(_alive(p) for p in pids)


def _idle(pid: int) -> bool:
    return os.sched_getscheduler(pid) == os.SCHED_IDLE


def test_spin_rounds_alternate_with_a_spinner_per_cpu_only_in_spinning_rounds(monkeypatch, tmp_path):
    seen = []

    class Bench:
        def __init__(self, _args):
            self.imgs = {"demo": []}

        def segcam(self, models):
            seen.append(len(children() - before))
            return [], "http://x"

        def cleanup(self, procs):
            pass

        def close(self):
            seen.append("closed")

    def children() -> set[int]:
        me = str(os.getpid())
        return {int(d) for d in os.listdir("/proc") if d.isdigit() and _alive(int(d)) and _stat(d)[1:2] == [me]}

    before = children()  # whatever else this test process runs
    result = {"overhead_ms": {"p50": 1.0, "p99": 2.0}, "latency_ms": {"p50": 3.0}, "throughput_per_s": 4.0}
    monkeypatch.setattr(halt_poll_ab.run, "Bench", Bench)
    monkeypatch.setattr(halt_poll_ab.run, "closed_loop", lambda *a, **k: result)
    monkeypatch.setattr(halt_poll_ab.run, "RESULTS", tmp_path)
    monkeypatch.setattr(halt_poll_ab.run, "machine", lambda device="cpu": {})
    assert halt_poll_ab.main(["--spin", "--rounds", "2"]) == 0
    cpus = os.cpu_count() or 1
    assert seen == [0, cpus, 0, cpus, "closed"]
    assert children() - before == set()
    saved = json.loads(next(tmp_path.glob("halt_poll_ab-*.json")).read_text())
    assert [len(saved["rounds"][m]) for m in ("halting", "spinning")] == [2, 2]
