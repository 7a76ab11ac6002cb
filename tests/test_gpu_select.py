"""FL_CUDA_VISIBLE_DEVICES resolved against NVML facts: UUIDs out, a Problem per bad entry."""

from __future__ import annotations

import pytest

from agent.config import build_config
from agent.gpu import MigDevice, NvmlFacts, NvmlGpu, resolve_devices

GPU0 = "GPU-00000000-0000-4000-8000-000000000000"
GPU1 = "GPU-11111111-1111-4111-8111-111111111111"
MIG_A = "MIG-aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
MIG_B = "MIG-bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"


def facts(*, mig: bool = False) -> NvmlFacts:
    migs = (MigDevice(MIG_A, 1, 0, 10), MigDevice(MIG_B, 2, 0, 10)) if mig else ()
    return NvmlFacts(
        True,
        gpus=(
            NvmlGpu(0, GPU0, mig_mode=mig, mig_devices=migs),
            NvmlGpu(1, GPU1, mig_mode=False),
        ),
    )


def selectors(value: str):
    result = build_config({"FL_CUDA_VISIBLE_DEVICES": value})
    assert result.ok, result.problems
    return result.config.cuda_visible_devices


def test_all_is_none():
    assert resolve_devices(selectors("all"), facts()).uuids is None


def test_indices_become_uuids_in_order_without_duplicates():
    selection = resolve_devices(selectors(f"1,0,{GPU1}"), facts())
    assert selection.ok and selection.uuids == (GPU1, GPU0)


def test_uuid_match_is_case_insensitive_and_returns_nvml_spelling():
    selection = resolve_devices(selectors("GPU-" + GPU1[4:].upper()), facts())
    assert selection.uuids == (GPU1,)


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("2", "GPU index 2 is out of range: NVML sees 2 GPUs (0..1)"),
        ("GPU-99999999-9999-4999-8999-999999999999", "no GPU with UUID"),
        (MIG_A, "MIG mode is off on every GPU"),
    ],
)
def test_bad_entries_are_named(value, fragment):
    selection = resolve_devices(selectors(value), facts())
    (problem,) = selection.problems
    assert problem.name == "gpu_selection_invalid" and problem.subject == "FL_CUDA_VISIBLE_DEVICES"
    assert repr(value) in problem.message and fragment in problem.message


def test_each_bad_entry_is_reported():
    selection = resolve_devices(selectors("0,7,9"), facts())
    assert [p.message.split(":")[0] for p in selection.problems] == ["entry '7'", "entry '9'"]


def test_mig_uuid_and_legacy_form():
    legacy = f"MIG-{GPU0}/2/0"
    selection = resolve_devices(selectors(f"{MIG_A},{legacy}"), facts(mig=True))
    assert selection.ok and selection.uuids == (MIG_A, MIG_B)


def test_unknown_mig_device_lists_the_known_ones():
    other = "MIG-cccccccc-cccc-4ccc-8ccc-cccccccccccc"
    (problem,) = resolve_devices(selectors(other), facts(mig=True)).problems
    assert MIG_A in problem.message and MIG_B in problem.message


def test_mig_and_full_gpu_mixed_is_refused():
    (problem,) = resolve_devices(selectors(f"{MIG_A},1"), facts(mig=True)).problems
    assert "mixed with full GPUs" in problem.message


def test_whole_gpu_in_mig_mode_is_refused():
    (problem,) = resolve_devices(selectors("0"), facts(mig=True)).problems
    assert "MIG mode" in problem.message and GPU0 in problem.message


def test_several_mig_devices_for_one_supernode_is_named():
    selection = resolve_devices(selectors(f"{MIG_A},{MIG_B}"), facts(mig=True))
    assert selection.ok and selection.uuids == (MIG_A, MIG_B)
    (warning,) = selection.warnings
    assert warning.name == "mig_one_device_per_process"
    assert "sees only one MIG device" in warning.message and MIG_A in warning.message


def test_all_on_a_mig_gpu_gets_the_same_warning():
    assert resolve_devices(selectors("all"), facts(mig=True)).warnings[0].name == (
        "mig_one_device_per_process"
    )


def test_one_mig_device_is_fine():
    assert resolve_devices(selectors(MIG_A), facts(mig=True)).warnings == ()
    assert resolve_devices(selectors("all"), facts()).warnings == ()
