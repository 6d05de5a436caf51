"""benchmarks.halt_poll_ab changes a host-wide kernel setting: it must refuse where it cannot
compare anything, and put the original value back whatever happens to the run."""

from __future__ import annotations

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
