"""benchmarks.wake times a round trip hot and after idling, without timing the idle itself, and
the run's report names the host's figure so overhead from two hosts can be read against it."""

from __future__ import annotations

import json

from benchmarks.report import markdown
from benchmarks.wake import (
    code_after_idle,
    describe,
    describe_code,
    hop_code,
    idle_driver,
    redis_round_trips,
    round_trips,
)


class FakeHost:
    """A ping that takes 0.05 ms hot and 0.4 ms right after a sleep, on a clock of its own."""

    def __init__(self) -> None:
        self.now, self.slept, self.pings = 0.0, False, 0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept = True

    def ping(self) -> None:
        self.now += 0.0004 if self.slept else 0.00005
        self.slept, self.pings = False, self.pings + 1


def test_idle_rounds_pay_the_wake_up_and_the_sleep_is_not_timed():
    host = FakeHost()
    w = round_trips(host.ping, rounds=10, idle_ms=50, sleep=host.sleep, clock=host.clock)
    assert w["hot_p50_ms"] == 0.05
    assert w["idle_p50_ms"] == 0.4  # 50 ms of sleep would show as 50.4
    assert host.pings == 100 + 10 + 100 + 10  # each series: warm-up, then timed


def test_a_real_redis_answers_and_the_report_names_the_figure(redis_url, tmp_path):
    w = redis_round_trips(redis_url, rounds=4, idle_ms=1, sys_root=tmp_path)  # a host without cpuidle
    assert 0 < w["hot_p50_ms"] < 1000 and 0 < w["idle_p50_ms"] < 1000
    run = {"machine": {"cpu": "x", "cores": 2, "loopback": w}, "sections": {}}
    assert "after 1 ms idle (`python -m benchmarks.wake`)" in markdown(run)
    assert "Host:" not in markdown({"machine": {"cpu": "x", "cores": 2}, "sections": {}})


def test_the_idle_driver_is_read_where_the_kernel_has_one(tmp_path, redis_url):
    assert idle_driver(tmp_path) == {}  # no cpuidle, no haltpoll module: nothing claimed
    (tmp_path / "devices/system/cpu/cpuidle").mkdir(parents=True)
    (tmp_path / "devices/system/cpu/cpuidle/current_driver").write_text("haltpoll\n")
    (tmp_path / "module/haltpoll/parameters").mkdir(parents=True)
    (tmp_path / "module/haltpoll/parameters/guest_halt_poll_ns").write_text("200000\n")
    assert idle_driver(tmp_path) == {"cpuidle": "haltpoll", "guest_halt_poll_ns": 200000}
    w = redis_round_trips(redis_url, rounds=2, idle_ms=1, sys_root=tmp_path)
    assert describe(w).endswith("after 1 ms idle; cpuidle haltpoll, guest_halt_poll_ns 200000")


def test_code_after_idle_times_the_code_only_and_spinning_does_not_sleep():
    host = FakeHost()
    calls = []

    def code():  # 40 us hot, 150 us right after a sleep
        host.now += 0.00015 if host.slept else 0.00004
        host.slept = False
        calls.append(1)

    def spin(s: float) -> None:  # time passes, awake
        host.now += s

    c = code_after_idle(code, rounds=10, idle_ms=50, sleep=host.sleep, clock=host.clock, spin=spin)
    assert (c["hot_us"], c["after_spin_us"], c["after_sleep_us"]) == (40.0, 40.0, 150.0)
    assert len(calls) == 3 * (100 + 10)
    assert "40 us hot, 40 us after 50 ms spinning, 150 us after 50 ms asleep" in describe_code(c)


def test_the_hop_code_is_real_json_work():
    out = json.loads(hop_code())
    assert out["result"]["artifacts"]["mask"].endswith("/artifacts/mask") and "owner" not in out


def test_the_command_keeps_its_figures_as_json(redis_url, tmp_path, monkeypatch, capsys):
    from benchmarks import run, wake

    monkeypatch.setattr(run, "RESULTS", tmp_path)
    assert wake.main(["--redis", redis_url, "--rounds", "3", "--idle-ms", "1"]) == 0
    (saved,) = tmp_path.glob("wake-*.json")
    doc = json.loads(saved.read_text())
    assert doc["loopback"]["probe"] == "Redis PING from redis-py" and doc["loopback"]["idle_ms"] == 1
    assert doc["hop_code"]["hot_us"] > 0 and doc["machine"]["cores"] >= 1
    assert doc["args"]["rounds"] == 3 and "commit" in doc["code"]  # rerunnable: the command and its code
    assert f"{doc['loopback']['hot_p50_ms']:.3f} ms hot" in capsys.readouterr().out  # the same figure printed
    assert wake.main(["--redis", redis_url, "--rounds", "3", "--idle-ms", "1", "--no-save"]) == 0
    assert len(list(tmp_path.glob("wake-*.json"))) == 1
