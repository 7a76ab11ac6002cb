"""MIG instances after a reboot: wait (bounded) only when a MIG tool will create them."""

from __future__ import annotations

import pytest

from agent.gpu.mig import awaiting_instances, mig_tool, should_wait_for_mig, wait_for_mig
from agent.gpu.nvml import MigDevice, NvmlFacts, NvmlGpu, mig_profile_name
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


# --- MIG profile names (NVIDIA go-nvlib mig_profile.go: getMigMemorySizeGB, String) ---

MIB, GIB = 2**20, 2**30


def test_memory_rounds_up_to_the_next_eighth_as_go_nvlib_tests_it():
    """go-nvlib's TestGetMigMemorySizeGB: on 24, 40 and 80 GiB GPUs, every size in 1/32 GiB
    steps names the smallest eighth of the GPU's memory that holds it."""
    for total in (24 * GIB, 40 * GIB, 80 * GIB):
        eighth = total // 8
        for size in range(GIB // 32, total + 1, GIB // 32):
            expected = next(j for j in range(eighth, total + 1, eighth) if size <= j) // GIB
            assert mig_profile_name(1, 1, size // MIB, total) == f"1g.{expected}gb", size


# (parent MiB as NVML reports it, gi slices, ci slices, MIG device MiB) -> name. The device
# sizes are illustrative, one inside each eighth; the parent's whole GiB are rounded up.
PRODUCTS = [
    ((40960, 1, 1, 4864), "1g.5gb"),  # A100-40GB
    ((40960, 2, 2, 9728), "2g.10gb"),
    ((40960, 3, 3, 19968), "3g.20gb"),
    ((40960, 7, 7, 40192), "7g.40gb"),
    ((81559, 1, 1, 9856), "1g.10gb"),  # H100-80GB: 79.6 GiB counts as 80
    ((81559, 3, 3, 40192), "3g.40gb"),
    ((81559, 3, 1, 40192), "1c.3g.40gb"),  # a compute instance of one of the three slices
    ((143771, 1, 1, 16384), "1g.18gb"),  # H200: 141 GiB, an eighth is 17.625
    ((143771, 2, 2, 33536), "2g.35gb"),
    ((143771, 3, 3, 70144), "3g.71gb"),  # 70.5: halves away from zero (Go), not to even
    ((143771, 7, 7, 143104), "7g.141gb"),
]


@pytest.mark.parametrize(("args", "name"), PRODUCTS)
def test_profile_names_of_real_products(args, name):
    parent_mib, gi, ci, mib = args
    assert mig_profile_name(gi, ci, mib, parent_mib * MIB) == name


@pytest.mark.parametrize(
    ("gi", "ci", "mib", "parent"),
    [
        (1, 1, 0, 80 * GIB),  # no memory
        (1, 1, -1, 80 * GIB),
        (1, 1, 80 * 1024 + 1, 80 * GIB),  # more than the whole GPU
        (1, 1, 2**63, 80 * GIB),
        (1, 1, 10240, 0),  # parent memory unknown
        (1, 1, 10240, None),
        (0, 0, 10240, 80 * GIB),  # no slices
        (1, 2, 10240, 80 * GIB),  # a compute instance larger than its GPU instance
        (9, 9, 10240, 80 * GIB),  # more slices than any GPU has
        (2**32 - 1, 1, 10240, 80 * GIB),
    ],
)
def test_values_no_mig_device_has_give_no_name(gi, ci, mib, parent):
    assert mig_profile_name(gi, ci, mib, parent) is None


def test_a_huge_gpu_still_gives_a_name():
    # a quarter of 2**62 bytes (2**32 GiB) is 2**30 GB
    assert mig_profile_name(1, 1, 2**40, 2**62) == f"1g.{2**30}gb"
