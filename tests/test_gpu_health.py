"""GPU health: the XID catalog, the summary OneGate gets, and NVML counters and events read by
the real pynvml from the stand-in library (in child processes, one per scenario)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from agent.errors import Problem
from agent.gpu.health import (
    FAILED,
    OK,
    WARNING,
    GpuEvent,
    GpuHealth,
    HealthFacts,
    changed,
    summarise,
    xid_action,
)
from tests.fixtures_gpu import (  # noqa: F401 - fixtures
    BRANCH_BINDINGS,
    H100_UUID,
    REPO,
    h100,
    nvml_bindings,
    nvml_env,
    nvml_stubs,
    run_python,
)

OTHER_UUID = "GPU-7e000000-2222-4a2b-9c3d-0123456789ab"
AT = 1_764_500_000.0  # 2025-11-30T10:53:20Z
PLAIN = re.compile(r"[A-Za-z0-9 :;._-]+")  # nothing OneGate would need base64 for


# --- the XID catalog ---


@pytest.mark.parametrize(
    ("xid", "action"),
    [
        (13, "restart_app"),  # graphics engine exception: the application's fault
        (31, "restart_app"),  # MMU fault
        (43, "none"),  # channel reset verification: the driver recovered
        (94, "restart_app"),  # contained ECC: only the application is hit
        (63, "none"),  # row remapping recorded
        (92, "none"),  # excessive single-bit ECC interrupts
        (48, "reboot_vm"),  # double-bit ECC
        (64, "reboot_vm"),  # row remapping failure
        (95, "reboot_vm"),  # uncontained ECC
        (119, "reboot_vm"),  # GSP RPC timeout
        (120, "reboot_vm"),  # GSP error
        (79, "restart_host"),  # fallen off the bus: the bare-metal host
        (54, "contact_support"),  # reduced clocking: check the mechanicals
        (4242, "unknown"),
    ],
)
def test_xid_action_after_nvidias_catalog(xid, action):
    assert xid_action(xid) == action


# --- the summary ---


def healthy(uuid: str = H100_UUID, index: int = 0, **extra) -> GpuHealth:
    return GpuHealth(
        index,
        uuid,
        **{
            "ecc_uncorrected_volatile": 0,
            "ecc_uncorrected_aggregate": 0,
            "remap_pending": False,
            "remap_failure": False,
            "clock_reasons": 0,
            **extra,
        },
    )


def facts(*gpus: GpuHealth) -> HealthFacts:
    return HealthFacts(True, gpus)


def xid(number: int, at: float = AT) -> GpuEvent:
    return GpuEvent("xid", H100_UUID, at, number)


def test_healthy_gpus_are_ok():
    health = summarise(facts(healthy(), healthy(OTHER_UUID, 1)), [], [H100_UUID, OTHER_UUID])
    assert (health.value, health.detail, health.last_xid) == (OK, "all GPUs healthy", None)
    assert set(health.attributes()) == {"FL_GPU_HEALTH", "FL_GPU_HEALTH_DETAIL"}


@pytest.mark.parametrize(
    ("extra", "value", "words"),
    [
        ({"remap_pending": True}, WARNING, "row remap pending: reboot_vm"),
        ({"remap_failure": True}, FAILED, "row remap failed: contact_support"),
        ({"ecc_uncorrected_volatile": 2}, WARNING, "2 uncorrectable ECC"),
        ({"clock_reasons": 0x40}, WARNING, "hw_thermal"),
        ({"clock_reasons": 0x8 | 0x1}, WARNING, "hw_slowdown"),
        ({"clock_reasons": 0x4 | 0x1}, OK, "all GPUs healthy"),  # power cap, idle: policy
        ({"ecc_uncorrected_aggregate": 5}, OK, "all GPUs healthy"),  # lifetime count
    ],
)
def test_counters_and_slowdowns(extra, value, words):
    health = summarise(facts(healthy(**extra)), [], [H100_UUID])
    assert health.value == value and words in health.detail


def test_lost_and_gone_gpus_fail():
    lost = summarise(facts(GpuHealth(0, None, lost=True)), [], [H100_UUID])
    assert (lost.value, lost.detail) == (FAILED, "GPU0 lost")
    gone = summarise(facts(healthy()), [], [H100_UUID, OTHER_UUID])
    assert (gone.value, gone.detail) == (FAILED, "GPU-7e000000 gone")
    down = HealthFacts(False, problem=Problem("gpu_driver_not_loaded", "nvml", "no module"))
    assert summarise(down, [], [H100_UUID]).detail == "NVML gpu_driver_not_loaded"


def test_application_xid_is_reported_but_the_node_stays_ok():
    health = summarise(facts(healthy()), [xid(13)], [H100_UUID])
    assert (health.value, health.last_xid, health.last_xid_action) == (OK, 13, "restart_app")
    assert health.attributes()["FL_GPU_LAST_XID_TIME"] == "2025-11-30T10:53:20Z"


def test_reset_class_event_stays_failed_and_the_last_xid_is_the_newest():
    events = [xid(48), GpuEvent("double_bit_ecc", H100_UUID, AT + 1), xid(13, AT + 2)]
    health = summarise(facts(healthy()), events, [H100_UUID])
    assert health.value == FAILED
    assert health.detail == "GPU-5d3b1c2a XID 48: reboot_vm; GPU-5d3b1c2a double_bit_ecc: reboot_vm"
    assert (health.last_xid, health.last_xid_action) == (13, "restart_app")


def test_fallen_off_the_bus():
    health = summarise(facts(GpuHealth(0, None, lost=True)), [xid(79)], [H100_UUID])
    assert health.value == FAILED and health.detail.startswith("GPU0 lost")
    assert health.last_xid_action == "restart_host"


def test_detail_is_short_and_plain_whatever_happens():
    gpus = [
        healthy(f"GPU-{i:08d}-aaaa", i, remap_pending=True, clock_reasons=0xE8) for i in range(8)
    ]
    events = [xid(n) for n in (79, 4242, 48, 54)]
    health = summarise(HealthFacts(True, tuple(gpus)), events, [])
    assert len(health.detail) <= 200 and PLAIN.fullmatch(health.detail)
    assert health.detail.startswith("GPU-5d3b1c2a XID 79: restart_host")  # the worst first


def test_changed_sends_only_what_changed():
    ok = summarise(facts(healthy()), [], [H100_UUID])
    first, deletes = changed(None, ok)
    assert first == ok.attributes() and deletes == ()
    assert changed(ok.attributes(), ok) == ({}, ())
    thermal = summarise(facts(healthy(clock_reasons=0x40)), [], [H100_UUID])
    assert set(changed(ok.attributes(), thermal)[0]) == {"FL_GPU_HEALTH", "FL_GPU_HEALTH_DETAIL"}
    after_xid = summarise(facts(healthy()), [xid(13)], [H100_UUID])
    assert set(changed(ok.attributes(), after_xid)[0]) == {
        "FL_GPU_LAST_XID",
        "FL_GPU_LAST_XID_TIME",
        "FL_GPU_LAST_XID_ACTION",
    }
    # after a reboot the watch starts without events: the old XID goes
    assert changed(after_xid.attributes(), ok) == (
        {},
        ("FL_GPU_LAST_XID", "FL_GPU_LAST_XID_TIME", "FL_GPU_LAST_XID_ACTION"),
    )


# --- NVML through the real pynvml and the stand-in ---

_READ = """
import json
from dataclasses import asdict
from agent.gpu.health import read_health
print(json.dumps(asdict(read_health())))
"""


def counters(**extra) -> dict:
    return h100(
        ecc={"uncorrected_volatile": 1, "uncorrected_aggregate": 3},
        remapped_rows={"correctable": 2, "uncorrectable": 1, "pending": 1, "failure": 0},
        clock_reasons=0x40,
        **extra,
    )


@pytest.mark.parametrize("branch", tuple(BRANCH_BINDINGS))
@pytest.mark.parametrize("own_bindings", [True, False], ids=["branch-bindings", "venv-bindings"])
def test_counters_read_on_every_branch(tmp_path, nvml_stubs, nvml_bindings, branch, own_bindings):  # noqa: F811
    bindings = nvml_bindings[branch] if own_bindings else None
    env = nvml_env(nvml_stubs[branch], counters(), tmp_path, bindings)
    (gpu,) = run_python(_READ, [], env)["gpus"]
    assert gpu == {
        "index": 0,
        "uuid": H100_UUID,
        "lost": False,
        "ecc_uncorrected_volatile": 1,
        "ecc_uncorrected_aggregate": 3,
        "remap_pending": True,
        "remap_failure": False,
        "clock_reasons": 0x40,
        "problem": None,
    }


def test_gpu_without_ecc_or_row_remapper(tmp_path, nvml_stubs):  # noqa: F811
    (gpu,) = run_python(_READ, [], nvml_env(nvml_stubs[550], h100(), tmp_path))["gpus"]
    assert gpu["ecc_uncorrected_volatile"] is None and gpu["remap_pending"] is None
    assert gpu["clock_reasons"] == 0 and not gpu["lost"]


_WATCH = """
import json, sys, time
from dataclasses import asdict
from agent.gpu.health import NvmlEvents, read_health
wanted, got = int(sys.argv[1]), []
with NvmlEvents() as events:
    print(json.dumps(events.registered), flush=True)
    deadline = time.monotonic() + 20
    while len(got) < wanted and not events.lost and time.monotonic() < deadline:
        event = events.wait(200)
        if event:
            got.append(asdict(event))
    lost = events.lost
print(json.dumps({"events": got, "lost": lost, "after": asdict(read_health())}))
"""


def watch(
    tmp_path, stub, scenario: dict, lines: list[dict], wanted: int, bindings=None
) -> tuple[dict, dict]:
    """Run NvmlEvents in a child; append `lines` to the trigger file once it has registered."""
    trigger = tmp_path / "events.jsonl"
    trigger.write_text("")
    env = {**nvml_env(stub, scenario, tmp_path, bindings), "NVML_STUB_EVENTS": str(trigger)}
    child = subprocess.Popen(
        [sys.executable, "-c", _WATCH, str(wanted)], env=env, stdout=subprocess.PIPE, text=True
    )
    registered = json.loads(child.stdout.readline())
    with trigger.open("a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    return registered, json.loads(out)


@pytest.mark.parametrize("branch", tuple(BRANCH_BINDINGS))
@pytest.mark.parametrize("own_bindings", [True, False], ids=["branch-bindings", "venv-bindings"])
def test_xid_events_reach_the_watch_then_the_gpu_is_lost(
    tmp_path,
    nvml_stubs,  # noqa: F811
    nvml_bindings,  # noqa: F811
    branch,
    own_bindings,
):
    lines = [
        {"gpu": 0, "type": 8, "data": 13},
        {"gpu": 0, "type": 2, "data": 0},
        {"gpu": 0, "type": 8, "data": 48},
        {"gpu": 0, "type": 8, "data": 79},
        {"gpu": 0, "lost": 1},
    ]
    bindings = nvml_bindings[branch] if own_bindings else None
    registered, out = watch(tmp_path, nvml_stubs[branch], counters(), lines, 10, bindings)
    assert registered == {H100_UUID: 0x8 | 0x2 | 0x1}  # XID, DBE, SBE; no clock or P-state
    assert [(e["kind"], e["xid"], e["uuid"]) for e in out["events"]] == [
        ("xid", 13, H100_UUID),
        ("double_bit_ecc", None, H100_UUID),
        ("xid", 48, H100_UUID),
        ("xid", 79, H100_UUID),  # named from its handle: NVML no longer answers for it
    ]
    (after,) = out["after"]["gpus"]
    assert out["lost"] and after["lost"] and after["uuid"] is None


def test_only_supported_types_are_registered(tmp_path, nvml_stubs):  # noqa: F811
    lines = [{"gpu": 0, "type": 1, "data": 0}, {"gpu": 0, "type": 8, "data": 31}]
    registered, out = watch(tmp_path, nvml_stubs[535], h100(event_types=0x8 | 0x10), lines, 1)
    assert registered == {H100_UUID: 0x8}
    assert [(e["kind"], e["xid"]) for e in out["events"]] == [("xid", 31)]


_STRICT = """
import json, pynvml
pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
events = pynvml.nvmlEventSetCreate()
out = {}
try:
    pynvml.nvmlDeviceRegisterEvents(handle, 0x8 | 0x1, events)
except pynvml.NVMLError as exc:
    out["unsupported"] = exc.value
try:
    pynvml.nvmlEventSetWait_v2(events, 50)
except pynvml.NVMLError as exc:
    out["nothing_registered"] = exc.value
print(json.dumps(out))
"""


def test_stand_in_is_strict_like_nvml(tmp_path, nvml_stubs):  # noqa: F811
    """nvml.h: an unsupported type registers none; waiting with no event times out."""
    out = run_python(_STRICT, [], nvml_env(nvml_stubs[570], h100(event_types=0x8), tmp_path))
    assert out == {"unsupported": 3, "nothing_registered": 10}


def test_the_real_gpu_script_on_the_stand_in(tmp_path, nvml_stubs):  # noqa: F811
    """bench/gpu_health.py, prepared for a machine with a GPU, runs its whole path here."""
    trigger = tmp_path / "events.jsonl"
    trigger.write_text(json.dumps({"gpu": 0, "type": 8, "data": 13}) + "\n")
    env = {**nvml_env(nvml_stubs[570], counters(), tmp_path), "NVML_STUB_EVENTS": str(trigger)}
    argv = [sys.executable, "bench/gpu_health.py", "--out", str(tmp_path / "out"), "--wait", "1"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out/gpu_health.json").read_text())
    assert report["registered"] == {H100_UUID: 0xB} and report["events"] == []  # only new ones
    assert report["summary"]["FL_GPU_HEALTH"] == "WARNING"  # thermal, pending remap, 1 ECC
    assert report["facts"]["gpus"][0]["remap_pending"] and report["read_ms_median"] >= 0
