"""The fabric verdict: honest timing, the Fabric Manager version rule, NVSwitch placement."""

from __future__ import annotations

from agent.gpu.fabric import fabric_fix, fabric_verdict, wait_fabric
from agent.gpu.nvml import Fabric
from agent.gpu.waiting import poll

UUID = "GPU-5d3b1c2a-1111-4a2b-9c3d-0123456789ab"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def reader(*states: Fabric):
    seq = list(states)
    return lambda: {UUID: seq.pop(0) if len(seq) > 1 else seq[0]}


def test_completed_with_error_at_first_read_does_not_claim_a_wait():
    clock = FakeClock()
    polled = wait_fabric(reader(Fabric("completed", 999)), 60, clock=clock, sleep=clock.sleep)
    verdict = fabric_verdict(polled, ("0000:05:00.0",), "550.54.15")
    assert verdict.status == "fail" and polled.waited_s == 0 and clock.slept == []
    assert "error status 999" in verdict.detail and "60s" not in verdict.detail
    assert "after 0.0s" in verdict.detail


def test_pending_until_the_deadline_says_how_long():
    clock = FakeClock()
    polled = wait_fabric(
        reader(Fabric("in_progress", 0)), 10, clock=clock, sleep=clock.sleep, interval_s=3
    )
    verdict = fabric_verdict(polled, (), "535.183.01")
    assert polled.timed_out and polled.waited_s == 10 and clock.slept == [3, 3, 3, 1]
    assert "still in_progress after 10.0s" in verdict.detail


def test_completes_during_the_wait():
    clock = FakeClock()
    read = reader(Fabric("not_started", 0), Fabric("in_progress", 0), Fabric("completed", 0))
    polled = wait_fabric(read, 60, clock=clock, sleep=clock.sleep, interval_s=2)
    verdict = fabric_verdict(polled, (), "570.124.06")
    assert verdict.status == "ok" and verdict.waited_s == 4 and polled.reads == 3


def test_nvswitch_without_fabric_state_fails_with_the_rule():
    verdict = fabric_verdict(None, ("0000:05:00.0",), "550.54.15")
    assert verdict.status == "fail" and verdict.problem.name == "fabric_not_ready"
    fix = verdict.problem.fix
    assert "nvidia-fabricmanager-550 550.54.15" in fix and "exactly" in fix
    assert "NVSwitches must be passed into this VM" in fix and "shared NVSwitch mode" in fix


def test_no_fabric_no_switch_is_skipped():
    assert fabric_verdict(None, (), "550.54.15").status == "skip"


def test_fix_without_a_known_driver():
    assert "nvidia-fabricmanager-<branch>" in fabric_fix(None)


def test_poll_never_sleeps_past_the_deadline():
    clock = FakeClock()
    polled = poll(lambda: 1, lambda v: True, 0.5, interval_s=2, clock=clock, sleep=clock.sleep)
    assert clock.slept == [0.5] and polled.timed_out
