"""The OneGate client against the emulator: batching, encoding, retries, the queue, READY."""

from __future__ import annotations

import io
import itertools
import json
import random
import stat
import time

import pytest

from agent import log
from agent.context import Platform, Secret
from agent.emulator.onegate import OneGateEmulator
from agent.errors import AgentError
from agent.onegate import (
    ATTRIBUTES,
    QUEUE_LIMIT,
    STATES,
    Report,
    Reporter,
    RetryPolicy,
    error_value,
    is_plain,
    queue_dir,
    remote_status,
    state_report,
)
from agent.paths import Root

FAST = RetryPolicy(base_s=0.02, cap_s=0.2, connect_timeout_s=0.5, read_timeout_s=0.5)
VMID = 42
TOKEN = "secret-token-42"


@pytest.fixture
def emulator():
    with OneGateEmulator() as em:
        em.add_vm(41, token="tok-41", ips=("10.0.0.41",))
        em.add_vm(VMID, token=TOKEN, ips=("10.0.0.42",))
        em.add_service(7, "flower", {"superlink": [41], "supernode": [VMID]})
        yield em


def platform_for(em: OneGateEmulator, vmid: int = VMID) -> Platform:
    return Platform(
        onegate_endpoint=em.endpoint,
        vmid=str(vmid),
        token=Secret(em.vms[vmid].token if vmid in em.vms else TOKEN),
    )


def reporter_for(em, root: Root, *, timeout=2.0, policy=FAST, seed=1, vmid=VMID) -> Reporter:
    platform = platform_for(em, vmid)
    return Reporter(
        endpoint=platform.onegate_endpoint,
        vmid=platform.vmid,
        token=platform.token,
        queue_dir=queue_dir(root),
        total_timeout_s=timeout,
        policy=policy,
        rng=random.Random(seed),
    )


@pytest.fixture
def root(tmp_path) -> Root:
    return Root(tmp_path)


def puts(em, kind="1"):
    return [r for r in em.requests if r.method == "PUT" and r.params.get("type") == kind]


# --------------------------------------------------------------------------- state_report


def test_state_report_not_ready_deletes_ready_and_error():
    updates, deletes = state_report("BOOTING", facts={"FL_AGENT_VERSION": "0.1.0"})
    assert updates == {"FL_STATE": "BOOTING", "FL_AGENT_VERSION": "0.1.0"}
    assert set(deletes) == {"FL_ERROR", "FL_NODE_READY", "READY"}


def test_state_report_ready_is_last_and_only_for_a_running_container():
    updates, deletes = state_report("RUNNING", facts={"FL_GPU_MODE": "GPU"}, ready=True)
    assert list(updates)[-2:] == ["FL_NODE_READY", "READY"]
    assert updates["READY"] == "YES" and updates["FL_NODE_READY"] == "YES"
    assert deletes == ("FL_ERROR",)
    updates, deletes = state_report("DEGRADED", error=("gpu_missing", "CPU fallback"), ready=True)
    assert updates["READY"] == "YES" and updates["FL_ERROR"] == "gpu_missing: CPU fallback"
    assert "FL_ERROR" not in deletes
    for state in set(STATES) - {"RUNNING", "DEGRADED"}:
        with pytest.raises(ValueError):
            state_report(state, ready=True)
    updates, deletes = state_report("FAILED", error=("toolkit_missing", "no nvidia-ctk"))
    assert "READY" not in updates and "READY" in deletes and "FL_NODE_READY" in deletes


def test_state_report_rejects_unknown_states_and_facts():
    with pytest.raises(ValueError):
        state_report("STUCK")
    with pytest.raises(ValueError):
        state_report("RUNNING", facts={"FL_NOT_AN_ATTRIBUTE": "1"})
    with pytest.raises(ValueError):
        state_report("RUNNING", facts={"READY": "YES"})


def test_error_value_is_one_readable_line():
    value = error_value("tls_error", 'bad "CA", [see]\nline two \\ ' + "x" * 300)
    assert is_plain("FL_ERROR", value)
    assert value.startswith("tls_error: bad 'CA'; (see) line two / ")
    assert len(value) <= len("tls_error: ") + 200
    with pytest.raises(ValueError):
        error_value("Not Snake", "m")


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ("YES", True),
        ("NVIDIA H200;NVIDIA H200", True),
        ("10.0.0.5:9092", True),
        ("a=b==", True),
        ("", False),
        (" lead", False),
        ('say "hi"', False),
        ("a,b", False),
        ("a[b", False),
        ("a]b", False),
        ("a\\b", False),
        ("a\nb", False),
        ("a\rb", False),
        ("gpu: not READY = YES", False),  # OneFlow's substring match would take it for READY
    ],
)
def test_plain_alphabet(value, plain):
    assert is_plain("FL_ERROR", value) is plain


def test_attribute_table_covers_every_report():
    assert {"FL_STATE", "READY", "FL_NODE_READY", "FL_ERROR"} <= set(ATTRIBUTES)
    assert len(STATES) == 8


# --------------------------------------------------------------------------- delivery


def test_one_request_per_state_change(emulator, root):
    reporter = reporter_for(emulator, root)
    facts = {
        "FL_GPU_MODE": "GPU",
        "FL_GPU_COUNT": "2",
        "FL_GPU_NAMES": "NVIDIA H200;NVIDIA H200",
        "FL_DRIVER_VERSION": "570.86.15",
        "FL_FLOWER_VERSION": "1.42.0",
    }
    assert reporter.send(*state_report("VALIDATING", facts=facts))
    updates = puts(emulator)
    assert len(updates) == 1
    assert updates[0].data_lines == ["FL_STATE=VALIDATING", *(f"{k}={v}" for k, v in facts.items())]
    assert updates[0].headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert updates[0].headers["X-ONEGATE-VMID"] == str(VMID)
    # nothing stale on the VM: no deletion request at all
    assert puts(emulator, "2") == []
    assert emulator.user_template(VMID)["FL_GPU_COUNT"] == "2"


@pytest.mark.parametrize(
    "value",
    ['say "hi"', "a,b", "[x]", "back\\slash", "two\nlines", 'all: " , [ ] \\ \n end', "é ü 中"],
)
def test_unsafe_values_round_trip_through_base64(emulator, root, value):
    reporter = reporter_for(emulator, root)
    assert reporter.send({"FL_ERROR": value})
    template = emulator.user_template(VMID)
    assert "FL_ERROR" not in template and "FL_ERROR_BASE64" in template
    assert remote_status(platform_for(emulator), root)["attributes"]["FL_ERROR"] == value


def test_switching_encoding_removes_the_other_name(emulator, root):
    reporter = reporter_for(emulator, root)
    assert reporter.send({"FL_GPU_NAMES": "a,b"})
    assert reporter.send({"FL_GPU_NAMES": "a;b"})
    template = emulator.user_template(VMID)
    assert template["FL_GPU_NAMES"] == "a;b" and "FL_GPU_NAMES_BASE64" not in template
    assert reporter.send({"FL_GPU_NAMES": "a,b"})
    assert "FL_GPU_NAMES" not in emulator.user_template(VMID)
    # an empty value is no value: deleted, not sent as `NAME=` (which the server mangles)
    assert reporter.send({"FL_GPU_NAMES": ""})
    assert not {"FL_GPU_NAMES", "FL_GPU_NAMES_BASE64"} & set(emulator.user_template(VMID))


def test_ready_only_last_never_on_failure_and_error_cleared_on_recovery(emulator, root):
    reporter = reporter_for(emulator, root)
    for state in ("BOOTING", "CONFIGURING", "VALIDATING", "STARTING"):
        assert reporter.send(*state_report(state))
        assert "READY" not in emulator.user_template(VMID)
    assert reporter.send(*state_report("RUNNING", ready=True))
    assert puts(emulator)[-1].data_lines[-1] == "READY=YES"
    assert sum("READY=YES" in r.params["data"] for r in puts(emulator)) == 1
    # a re-boot that fails: READY goes away before FAILED shows, FL_ERROR says why
    emulator.clear_requests()
    assert reporter.send(*state_report("BOOTING"))
    assert reporter.send(*state_report("FAILED", error=("toolkit_missing", "no toolkit")))
    template = emulator.user_template(VMID)
    assert template["FL_STATE"] == "FAILED" and template["FL_ERROR"].startswith("toolkit_missing")
    assert "READY" not in template and "FL_NODE_READY" not in template
    kinds = [(r.params["type"], r.params["data"].split("=")[0]) for r in emulator.requests]
    assert kinds[:3] == [("2", "FL_NODE_READY"), ("2", "READY"), ("1", "FL_STATE")]
    # recovery: RUNNING again, the stale FL_ERROR is removed
    assert reporter.send(*state_report("RUNNING", ready=True))
    template = emulator.user_template(VMID)
    assert "FL_ERROR" not in template and template["READY"] == "YES"


def test_deletion_of_an_absent_attribute_is_fine(emulator, root):
    reporter = reporter_for(emulator, root)
    reporter._present_known = True  # as if the VM were known to hold FL_ERROR: it does not
    reporter._present = {"FL_ERROR"}
    assert reporter.send({"FL_STATE": "RUNNING"}, ["FL_ERROR"])
    assert puts(emulator, "2")[0].status == 500


# --------------------------------------------------------------------------- failures


def test_backoff_with_jitter_between_retries(emulator, root):
    policy = RetryPolicy(base_s=0.08, cap_s=1.0, connect_timeout_s=1, read_timeout_s=1)
    reporter = reporter_for(emulator, root, timeout=5.0, policy=policy, seed=7)
    emulator.set_faults(fail_next=4, fail_status=503)
    reporter.get_vm()
    times = [r.time for r in emulator.requests]
    assert [r.status for r in emulator.requests] == [503, 503, 503, 503, 200]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    rng = random.Random(7)
    expected = [policy.delay(n, rng) for n in range(4)]
    for gap, want in zip(gaps, expected, strict=True):
        assert want <= gap < want + 0.15
    for n, want in enumerate(expected):  # within [d/2, d] of d = base * 2**n: jittered
        assert 0.04 * 2**n <= want <= 0.08 * 2**n
    assert len({round(w / 2**n, 4) for n, w in enumerate(expected)}) > 1
    assert gaps[3] > gaps[0]


@pytest.mark.parametrize(
    ("faults", "problem"),
    [
        ({"unauthorized": True}, "onegate_unauthorized"),
        (
            {"fail_next": 10, "fail_status": 403, "fail_body": "Host not permitted"},
            "onegate_forbidden",
        ),
    ],
)
def test_401_and_403_are_not_retried_and_kept_for_later(emulator, root, faults, problem):
    reporter = reporter_for(emulator, root)
    emulator.set_faults(**faults)
    assert reporter.send(*state_report("BOOTING")) is False
    assert len(emulator.requests) == 1
    assert reporter.last_problem.name == problem
    assert reporter.pending() == 1
    emulator.clear_faults()
    assert reporter.flush() == 1
    assert emulator.user_template(VMID)["FL_STATE"] == "BOOTING"


def test_host_not_permitted_reads_as_server_configuration(emulator, root):
    reporter = reporter_for(emulator, root)
    emulator.set_faults(fail_next=1, fail_status=403, fail_body="Host not permitted")
    with pytest.raises(AgentError) as info:
        reporter.get_vm()
    assert info.value.first.name == "onegate_forbidden"
    assert "server configuration" in info.value.first.fix


def test_restricted_attribute_is_refused_once_and_not_queued(emulator, root):
    reporter = reporter_for(emulator, root)
    assert reporter.send(*state_report("BOOTING"))
    emulator.clear_requests()
    assert reporter.send({"SERVICE_ID": "9"}) is False
    assert [r.status for r in emulator.requests] == [403]
    assert reporter.last_problem.name == "onegate_forbidden"
    assert "SERVICE_ID" in reporter.last_problem.message
    assert reporter.pending() == 0
    assert reporter.send(*state_report("BOOTING"))  # later reports are not blocked


def test_unauthorized_reads_say_token_or_vmid(emulator, root):
    emulator.set_faults(unauthorized=True)
    with pytest.raises(AgentError) as info:
        reporter_for(emulator, root).get_service()
    assert info.value.first.name == "onegate_unauthorized"
    assert "token or VMID" in info.value.first.message
    assert TOKEN not in str(info.value)


def test_bounded_time_when_onegate_is_slow(emulator, root):
    emulator.set_faults(slow_s=2.0)
    reporter = reporter_for(emulator, root, timeout=0.4)
    started = time.monotonic()
    assert reporter.send(*state_report("BOOTING")) is False
    assert time.monotonic() - started < 1.0
    assert reporter.pending() == 1
    assert reporter.last_problem.name == "onegate_unreachable"


def test_burst_of_5xx_is_ridden_out(emulator, root):
    emulator.set_faults(fail_for_s=0.15, fail_status=502)
    reporter = reporter_for(emulator, root, timeout=3.0)
    assert reporter.send(*state_report("BOOTING"))
    assert any(r.status == 502 for r in emulator.requests)
    assert emulator.user_template(VMID)["FL_STATE"] == "BOOTING"


def test_down_at_boot_then_up_delivers_everything_in_order(emulator, root):
    emulator.stop()
    reporter = reporter_for(emulator, root, timeout=0.3)
    assert reporter.send(*state_report("BOOTING")) is False
    emulator.start()
    emulator.set_faults(drop=True)  # answering, but dropping connections
    assert reporter.send(*state_report("CONFIGURING", facts={"FL_GPU_MODE": "GPU"})) is False
    assert reporter.pending() == 2
    files = sorted(queue_dir(root).glob("*.json"))
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert all(TOKEN not in f.read_text() for f in files)
    emulator.clear_faults()
    emulator.clear_requests()
    assert reporter.send(*state_report("RUNNING", ready=True))
    states = [r.data_lines[0] for r in puts(emulator)]
    assert states == ["FL_STATE=BOOTING", "FL_STATE=CONFIGURING", "FL_STATE=RUNNING"]
    assert reporter.pending() == 0
    template = emulator.user_template(VMID)
    assert template["FL_STATE"] == "RUNNING" and template["READY"] == "YES"
    assert template["FL_GPU_MODE"] == "GPU"


def test_flush_delivers_the_queue_in_order(emulator, root):
    emulator.stop()
    reporter = reporter_for(emulator, root, timeout=0.2)
    for state in ("BOOTING", "CONFIGURING", "FAILED"):
        reporter.send(*state_report(state))
    assert reporter.flush() == 0
    emulator.start()
    later = reporter_for(emulator, root)  # another process: the queue is on disk
    assert later.flush() == 3
    assert [r.data_lines[0] for r in puts(emulator)] == [
        "FL_STATE=BOOTING",
        "FL_STATE=CONFIGURING",
        "FL_STATE=FAILED",
    ]
    assert later.flush() == 0


def test_queue_merges_the_oldest_beyond_its_limit(emulator, root):
    emulator.stop()
    reporter = reporter_for(emulator, root, timeout=0.01)
    for n in range(QUEUE_LIMIT + 3):
        reporter.send({"FL_GPU_COUNT": str(n)}, ["FL_ERROR"] if n == 0 else ())
    assert reporter.pending() == QUEUE_LIMIT
    emulator.start()
    assert reporter_for(emulator, root, timeout=10).flush() == QUEUE_LIMIT
    assert emulator.user_template(VMID)["FL_GPU_COUNT"] == str(QUEUE_LIMIT + 2)


def test_report_merge_keeps_the_newest_word():
    old = Report({"A": "1", "B": "1"}, ("C",))
    new = Report({"C": "2"}, ("A",))
    assert old.merged(new) == Report({"B": "1", "C": "2"}, ("A",))


# --------------------------------------------------------------------------- off, reads


def test_reporting_off_without_endpoint_or_token_says_so_once(root):
    out = io.StringIO()
    log.configure("INFO", stream=out)
    reporter = Reporter.from_platform(Platform(vmid="3"), root)
    assert reporter.enabled is False
    assert reporter.send(*state_report("BOOTING")) is False
    assert reporter.flush() == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["onegate_reporting_off"]
    assert lines[0]["missing"] == ["ONEGATE_ENDPOINT", "token"]
    assert not queue_dir(root).exists()
    with pytest.raises(AgentError) as info:
        reporter.get_vm()
    assert info.value.first.name == "onegate_disabled"


def test_reads_and_their_errors(emulator, root):
    reporter = reporter_for(emulator, root)
    assert reporter.get_vm()["VM"]["ID"] == str(VMID)
    assert reporter.get_service()["SERVICE"]["roles"][0]["name"] == "superlink"
    assert reporter.get_vm_by_id(41)["VM"]["TEMPLATE"]["NIC"][0]["IP"] == "10.0.0.41"
    emulator.add_vm(99, token="tok-99")
    lonely = reporter_for(emulator, root, vmid=99)
    with pytest.raises(AgentError) as info:
        lonely.get_service()
    assert info.value.first.name == "onegate_error"
    assert "Empty or invalid SERVICE_ID" in info.value.first.message
    emulator.stop()
    with pytest.raises(AgentError) as info:
        reporter_for(emulator, root, timeout=0.2).get_vm()
    assert info.value.first.name == "onegate_unreachable"


def test_remote_status_shows_what_operators_see(emulator, root):
    reporter = reporter_for(emulator, root)
    facts = {"FL_GPU_NAMES": "H200, H200", "FL_GPU_MODE": "GPU"}
    reporter.send(*state_report("RUNNING", facts=facts, ready=True))
    status = remote_status(platform_for(emulator), root)
    assert status["vmid"] == str(VMID) and status["queued_reports"] == 0
    assert status["attributes"] == {
        "FL_STATE": "RUNNING",
        "FL_GPU_MODE": "GPU",
        "FL_GPU_NAMES": "H200, H200",
        "FL_NODE_READY": "YES",
        "READY": "YES",
    }


def test_unwritable_state_directory_does_not_stop_reporting(emulator, tmp_path):
    (tmp_path / "var").write_text("a file where /var/lib should be a directory")
    reporter = reporter_for(emulator, Root(tmp_path), timeout=0.2)
    assert reporter.send(*state_report("BOOTING"))
    emulator.stop()
    assert reporter.send(*state_report("FAILED", error=("x", "y"))) is False
    assert reporter.pending() == 0
