"""MIG instances after a reboot: wait (bounded) only when a MIG tool will create them."""

from __future__ import annotations

from agent.gpu.mig import awaiting_instances, mig_tool, should_wait_for_mig, wait_for_mig
from agent.gpu.nvml import MigDevice, NvmlFacts, NvmlGpu
from agent.paths import Root
from tests.test_gpu_fabric import FakeClock

GPU = "GPU-a1000000-0000-4000-8000-000000000001"
MIG = MigDevice("MIG-0b1c2d3e-0000-5000-9000-00000000000a", 1, 0, 20 * 2**30)


def nvml(*migs: MigDevice, mode: bool = True) -> NvmlFacts:
    return NvmlFacts(True, gpus=(NvmlGpu(0, GPU, mig_mode=mode, mig_devices=migs),))


def test_mig_tool_found_under_the_root(tmp_path):
    assert mig_tool(Root(tmp_path)) is None
    unit = tmp_path / "usr/lib/systemd/system/nvidia-mig-manager.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\n")
    assert mig_tool(Root(tmp_path)) == "/usr/lib/systemd/system/nvidia-mig-manager.service"


def test_wait_only_when_a_tool_will_create_instances():
    assert awaiting_instances(nvml()) == (GPU,)
    assert should_wait_for_mig(nvml(), "/usr/bin/nvidia-mig-parted")
    assert not should_wait_for_mig(nvml(), None)  # nothing will create them: fail now
    assert not should_wait_for_mig(nvml(MIG), "/usr/bin/nvidia-mig-parted")
    assert not should_wait_for_mig(nvml(mode=False), "/usr/bin/nvidia-mig-parted")


def test_instances_appear_during_the_wait():
    clock = FakeClock()
    answers = [nvml(), nvml(), nvml(MIG)]
    polled = wait_for_mig(lambda: answers.pop(0), 120, clock=clock, sleep=clock.sleep)
    assert not polled.timed_out and polled.value.gpus[0].mig_devices == (MIG,)
    assert polled.waited_s == 4.0


def test_the_wait_is_bounded():
    clock = FakeClock()
    polled = wait_for_mig(nvml, 30, clock=clock, sleep=clock.sleep, interval_s=5)
    assert polled.timed_out and polled.waited_s == 30
