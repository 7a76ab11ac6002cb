"""The OneGate client against the emulator: batching, encoding, retries, the queue, READY."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import itertools
import json
import random
import stat
import time

import pytest

from agent import log
from agent.context import Platform, Secret, read_platform
from agent.errors import AgentError
from agent.onegate import (
    ATTRIBUTES,
    STATES,
    Report,
    Reporter,
    RetryPolicy,
    error_value,
    is_plain,
    new_run,
    queue_dir,
    remote_status,
    state_report,
)
from agent.paths import Root
from emulators.onegate import VERSIONS, OneGateEmulator

FAST = RetryPolicy(base_s=0.02, cap_s=0.2, connect_timeout_s=0.5, read_timeout_s=0.5)
VMID = 42
TOKEN = "secret-token-42"


@pytest.fixture(params=VERSIONS)
def emulator(request):
    with OneGateEmulator(version=request.param) as em:
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
    assert kinds[:3] == [("2", "READY"), ("2", "FL_NODE_READY"), ("1", "FL_STATE")]
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
    expected = [policy.delay(n, rng) for n in range(1, 5)]
    for gap, want in zip(gaps, expected, strict=True):
        assert want <= gap < want + 0.15
    for n, want in enumerate(expected, 1):  # full jitter: anywhere in [0, d], d = base * 2**n
        assert 0 <= want <= 0.08 * 2**n
    assert len({round(w / 2**n, 4) for n, w in enumerate(expected, 1)}) > 1


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
def test_401_and_403_end_the_run_and_are_kept_for_the_next(emulator, root, faults, problem):
    reporter = reporter_for(emulator, root)
    emulator.set_faults(**faults)
    assert reporter.send(*state_report("BOOTING")) is False
    assert len(emulator.requests) == 1
    assert reporter.last_problem.name == problem
    assert reporter.pending() == 1
    emulator.clear_faults()
    # the rest of this run asks nothing: every report and read would get the same answer
    assert reporter.send(*state_report("CONFIGURING")) is False
    assert reporter.flush() == 0
    with pytest.raises(AgentError):
        reporter_for(emulator, root).get_service()
    assert len(emulator.requests) == 1
    assert reporter.pending() == 1  # one merged report
    new_run()  # the next run (the re-send timer, the next boot) delivers it
    assert reporter_for(emulator, root).flush() == 1
    assert emulator.user_template(VMID)["FL_STATE"] == "CONFIGURING"


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
    assert reporter.pending() == 1  # the backlog and the new report, merged
    files = sorted(queue_dir(root).glob("*.json"))
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert all(TOKEN not in f.read_text() for f in files)
    emulator.clear_faults()
    emulator.clear_requests()
    assert reporter.send(*state_report("RUNNING", ready=True))
    (update,) = puts(emulator)  # one request: the newest state, with every fact kept
    assert update.data_lines[0] == "FL_STATE=RUNNING" and "FL_GPU_MODE=GPU" in update.data_lines
    assert update.data_lines[-2:] == ["FL_NODE_READY=YES", "READY=YES"]
    assert reporter.pending() == 0
    template = emulator.user_template(VMID)
    assert template["FL_STATE"] == "RUNNING" and template["READY"] == "YES"
    assert template["FL_GPU_MODE"] == "GPU"


def test_flush_delivers_the_queue_as_one_report(emulator, root):
    emulator.stop()
    reporter = reporter_for(emulator, root, timeout=0.2)
    for state in ("BOOTING", "CONFIGURING", "FAILED"):
        reporter.send(*state_report(state))
    assert reporter.flush() == 0
    emulator.start()
    new_run()
    later = reporter_for(emulator, root)  # another process: the queue is on disk
    assert later.flush() == 1
    assert [r.data_lines[0] for r in puts(emulator)] == ["FL_STATE=FAILED"]
    assert later.flush() == 0


def test_ready_is_a_state_not_a_queued_event(emulator, root):
    """READY=YES queued while OneGate is down, then FAILED: READY=YES never goes out."""
    emulator.stop()
    reporter = reporter_for(emulator, root, timeout=0.2)
    reporter.send(*state_report("RUNNING", ready=True))
    reporter.send(*state_report("FAILED", error=("engine_gone", "docker stopped")))
    emulator.start()
    new_run()
    assert reporter_for(emulator, root).flush() == 1
    assert not any("READY=YES" in r.params.get("data", "") for r in emulator.requests)
    template = emulator.user_template(VMID)
    assert template["FL_STATE"] == "FAILED" and "READY" not in template


def test_reports_queued_by_other_processes_join_the_backlog(emulator, root):
    emulator.stop()
    reporter = reporter_for(emulator, root, timeout=0.1)
    for n in range(5):
        reporter.send({"FL_GPU_COUNT": str(n)}, ["FL_ERROR"] if n == 0 else ())
    from agent.onegate.outbox import Outbox
    from agent.onegate.wire import Report as R

    Outbox(queue_dir(root)).append(R({"FL_GPU_COUNT": "9"}, ()))  # the lock was busy
    assert reporter.pending() == 2
    emulator.start()
    new_run()
    assert reporter_for(emulator, root, timeout=10).flush() == 2
    assert [r.params["data"] for r in puts(emulator)] == ["FL_GPU_COUNT=9"]
    assert reporter.pending() == 0


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


# --------------------------------------------------------------------------- server versions


def test_absent_deletes_never_delay_ready_on_any_version(emulator, root):
    """7.0.1+ answer a delete of an absent attribute 'Internal server error': with what the VM
    holds unknown (GET /vm off) or stale, READY=YES still goes out at once."""
    emulator.deny("vm", "show")  # no GET /vm: every candidate is deleted blind
    reporter = reporter_for(emulator, root, timeout=2.0)
    started = time.monotonic()
    assert reporter.send(*state_report("RUNNING", ready=True))
    assert time.monotonic() - started < 1.0
    deletes = puts(emulator, "2")
    assert deletes and all(r.status == 500 for r in deletes)
    assert emulator.user_template(VMID)["READY"] == "YES"
    assert reporter.pending() == 0


def test_stale_knowledge_of_the_template_costs_one_read(emulator, root):
    reporter = reporter_for(emulator, root)
    reporter._present_known, reporter._present = True, {"FL_ERROR"}  # it is not there
    assert reporter.send(*state_report("RUNNING", ready=True))
    (delete,) = puts(emulator, "2")
    assert delete.status == 500
    reads = [r for r in emulator.requests if r.method == "GET" and r.path == "/vm"]
    assert len(reads) == (1 if emulator.version >= "7.0.1" else 0)  # only where ambiguous


def test_a_failed_delete_of_a_present_attribute_is_retried(emulator, root):
    emulator.set_attributes(VMID, FL_ERROR="old: error")
    reporter = reporter_for(emulator, root, timeout=3.0)
    reporter._present_known, reporter._present = True, {"FL_ERROR"}
    emulator.set_faults(fail_next=1, fail_status=500, fail_body="attribute update failed")
    assert reporter.send(*state_report("RUNNING", ready=True))
    assert [r.status for r in puts(emulator, "2")] == [500, 200]
    assert "FL_ERROR" not in emulator.user_template(VMID)


def test_ready_is_deleted_first_and_set_last(emulator, root):
    emulator.set_attributes(VMID, READY="YES", FL_NODE_READY="YES", FL_ERROR="x")
    reporter = reporter_for(emulator, root)
    reporter.send(*state_report("FAILED", error=("engine_gone", "docker stopped")))
    first = emulator.requests[1]  # after GET /vm
    assert (first.params["type"], first.params["data"]) == ("2", "READY")
    emulator.clear_requests()
    reporter.send(*state_report("RUNNING", facts={"FL_GPU_MODE": "CPU"}, ready=True))
    assert puts(emulator)[-1].data_lines[-1] == "READY=YES"


def test_a_permission_off_ends_its_route_only(emulator, root):
    emulator.deny("vm", "update")
    reporter = reporter_for(emulator, root)
    assert reporter.send(*state_report("BOOTING")) is False
    assert reporter.last_problem.name == "onegate_forbidden"
    count = len(emulator.requests)
    assert reporter.send(*state_report("CONFIGURING")) is False
    assert len(emulator.requests) == count  # PUT /vm asks no more in this run
    assert reporter.get_service()["SERVICE"]["name"] == "flower"  # reads still work


def test_the_backoff_is_shared_by_the_process(emulator, root):
    emulator.stop()
    policy = RetryPolicy(base_s=5.0, cap_s=30.0, connect_timeout_s=0.2, read_timeout_s=0.2)
    first = reporter_for(emulator, root, timeout=0.3, policy=policy, seed=2)
    assert first.send(*state_report("BOOTING")) is False
    emulator.start()
    second = reporter_for(emulator, root, timeout=0.3, policy=policy, seed=2)
    assert second.send(*state_report("CONFIGURING")) is False  # still backing off: no request
    assert emulator.requests == []
    assert second.last_problem.name == "onegate_unreachable"


# --------------------------------------------------------------------------- hostile input


def test_redirects_are_not_followed_and_carry_no_token(root, tmp_path):
    import http.server
    import threading

    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(dict(self.headers))
            if self.server is redirector:
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{other.server_port}/vm")
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"VM": {"USER_TEMPLATE": {}}}')

        do_PUT = do_GET

        def log_message(self, *args):
            pass

    redirector = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    other = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    for server in (redirector, other):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reporter = Reporter(
            endpoint=f"http://127.0.0.1:{redirector.server_port}",
            vmid="7",
            token=Secret(TOKEN),
            queue_dir=queue_dir(root),
            policy=FAST,
        )
        with pytest.raises(AgentError) as info:
            reporter.get_vm()
        assert info.value.first.name == "onegate_redirected"
        assert reporter.send(*state_report("BOOTING")) is False
    finally:
        for server in (redirector, other):
            server.shutdown()
            server.server_close()
    assert len(seen) == 1 and seen[0]["X-ONEGATE-TOKEN"] == TOKEN  # the redirector only


class Answering:
    """A local HTTP server whose every answer is `answer(handler, stop)`, in threads; stopped,
    closed and its handlers released on exit. `sent` counts the body bytes it got out."""

    def __init__(self, answer) -> None:
        import http.server
        import threading

        self.stop = threading.Event()
        self.sent = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                with contextlib.suppress(OSError):  # the client hung up: what these tests want
                    answer(self, outer)

            do_PUT = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))

    def write(self, handler, data: bytes) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        self.sent += len(data)

    def __enter__(self) -> Answering:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def reporter(self, root: Root, timeout: float) -> Reporter:
        return Reporter(
            endpoint=f"http://127.0.0.1:{self.server.server_port}",
            vmid="7",
            token=Secret(TOKEN),
            queue_dir=queue_dir(root),
            total_timeout_s=timeout,
            policy=FAST,
        )


DRIP_BYTES = 400
"""At one byte per 50 ms a 20 s body: each byte well inside the 0.5 s read timeout."""


def drip(framing: str):
    def answer(handler, server: Answering) -> None:
        if framing == "headers":  # a header line that never ends
            server.write(handler, b"HTTP/1.1 200 OK\r\nX-Drip: ")
            for _ in range(DRIP_BYTES):
                if server.stop.wait(0.05):
                    return
                server.write(handler, b"a")
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if framing == "length":
            handler.send_header("Content-Length", str(DRIP_BYTES))
        elif framing == "chunked":
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Connection", "close")
        handler.end_headers()
        for _ in range(DRIP_BYTES):
            if server.stop.wait(0.05):
                return
            server.write(handler, b"1\r\n \r\n" if framing == "chunked" else b" ")

    return answer


@pytest.mark.parametrize("framing", ["headers", "length", "chunked", "close"])
def test_a_dripping_answer_ends_at_the_deadline(root, framing):
    """Every byte comes inside the read timeout; the call's deadline still ends the read."""
    with Answering(drip(framing)) as server:
        reporter = server.reporter(root, timeout=1.0)
        with pytest.raises(AgentError) as info:
            reporter.get_vm()
        # headers cut at the deadline end there for http.client: the body is what is missing
        assert info.value.first.name == "onegate_too_slow"
        assert 0 < server.sent < DRIP_BYTES // 2 + 20  # cut off, not read to the end
        assert reporter.send(*state_report("BOOTING")) is False  # kept for a later run
    assert reporter.pending()


def test_an_answer_over_the_bound_is_not_read_further(root):
    from agent.onegate.transport import MAX_BODY_BYTES

    total = 4 * MAX_BODY_BYTES

    def huge(handler, server: Answering) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        block = b"x" * (1024 * 1024)
        while server.sent < total and not server.stop.is_set():
            server.write(handler, block)

    with Answering(huge) as server:
        reporter = server.reporter(root, timeout=5.0)
        with pytest.raises(AgentError) as info:
            reporter.get_vm()
        assert info.value.first.name == "onegate_answer_too_large"
        assert str(MAX_BODY_BYTES) in info.value.first.message
        assert server.sent < total


def test_a_compressed_answer_is_not_asked_for(emulator, root):
    reporter_for(emulator, root).get_vm()
    assert {r.headers.get("Accept-Encoding") for r in emulator.requests} == {"identity"}


@pytest.mark.parametrize("content", ["null", "[]", "{garbage", '{"updates": {"A": 1}}', "\xff"])
def test_a_queue_file_that_is_no_report_is_set_aside(emulator, root, content):
    out = io.StringIO()
    log.configure("INFO", stream=out)
    directory = queue_dir(root)
    directory.mkdir(parents=True)
    (directory / "000000000001-0000001.json").write_text(content, errors="surrogateescape")
    reporter = reporter_for(emulator, root)
    assert reporter.send(*state_report("BOOTING"))
    assert reporter.pending() == 0
    assert (directory / "000000000001-0000001.json.bad").exists()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    (aside,) = [e for e in events if e["event"] == "onegate_queue_file_set_aside"]
    assert aside["file"].endswith("000000000001-0000001.json")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("service", "not json"),
        ("service", "[]"),
        ("service", '{"SERVICE": []}'),
        ("service", '{"SERVICE": {"roles": {"a": 1}}}'),
        ("service", '{"SERVICE": {"roles": [{"nodes": [1]}]}}'),
        ("service", '{"SERVICE": {"roles": [{"cardinality": "x", "nodes": []}]}}'),
        ("vm", '{"VM": {"TEMPLATE": []}}'),
        ("vm", "null"),
    ],
)
def test_malformed_answers_are_named_errors(emulator, root, path, body):
    reporter = reporter_for(emulator, root)
    emulator.set_faults(fail_next=1, fail_status=200, fail_body=body)
    with pytest.raises(AgentError) as info:
        reporter.get_service() if path == "service" else reporter.get_vm_by_id(41)
    assert info.value.first.name == "onegate_bad_answer"


@pytest.mark.parametrize(
    "endpoint", ["http://h:abc", "http://a..b", "http://h:99999", "http://[::1:5030"]
)
def test_endpoints_the_http_stack_refuses_are_named_errors(root, endpoint):
    platform = read_platform({"ONEGATE_ENDPOINT": endpoint, "VMID": "3"}, Secret(TOKEN))
    assert [p.name for p in platform.problems] == ["invalid_value"]
    assert platform.onegate_endpoint is None
    reporter = Reporter(endpoint=endpoint, vmid="3", token=Secret(TOKEN), queue_dir=queue_dir(root))
    assert reporter.enabled is False
    assert reporter.last_problem.name == "onegate_endpoint_invalid"
    assert reporter.send(*state_report("BOOTING")) is False
    with pytest.raises(AgentError) as info:
        reporter.get_vm()
    assert info.value.first.name == "onegate_endpoint_invalid"


# --------------------------------------------------------------------------- READY as one-context


def ready_reporter(em, root, variables: dict[str, str]) -> Reporter:
    from agent.onegate import ReadyPolicy

    policy = ReadyPolicy.from_variables(variables)
    return Reporter.from_platform(
        platform_for(em), root, total_timeout_s=2.0, ready=dataclasses.replace(policy, wait_s=0.0)
    )


def test_report_ready_no_never_touches_ready(emulator, root):
    emulator.set_attributes(VMID, READY="YES")  # someone else's READY
    reporter = ready_reporter(emulator, root, {"REPORT_READY": "NO"})
    assert reporter.send(*state_report("RUNNING", ready=True))
    assert reporter.send(*state_report("FAILED", error=("x", "y")))
    assert not any("READY" in r.params.get("data", "") for r in emulator.requests)
    assert emulator.user_template(VMID)["READY"] == "YES"


@pytest.mark.parametrize(
    ("variables", "ready"),
    [
        ({"READY_SCRIPT": "exit 0"}, True),
        ({"READY_SCRIPT": "test -e /nonexistent"}, False),
        ({"READY_SCRIPT": base64.b64encode(b"true").decode()}, True),  # base64, as net-99
        ({"READY_SCRIPT": base64.b64encode(b"exit 3").decode()}, False),
        ({"READY_SCRIPT_PATH": "/opt/ready.sh"}, True),
        ({"READY_SCRIPT_PATH": "/opt/missing.sh", "READY_SCRIPT": "exit 0"}, False),
    ],
)
def test_ready_script_gates_ready(emulator, root, variables, ready):
    script = root.path("/opt/ready.sh")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text('#!/bin/sh\ntest "$REPORT_READY" = YES\n')
    script.chmod(0o755)
    reporter = ready_reporter(emulator, root, {"REPORT_READY": "YES", **variables})
    assert reporter.send(*state_report("RUNNING", ready=True))
    template = emulator.user_template(VMID)
    assert (template.get("READY") == "YES") is ready
    assert ("FL_NODE_READY" in template) is ready
    if not ready:
        assert reporter.ready_problem.name in ("ready_script_failed", "ready_script_missing")


def test_ready_script_runs_three_times_ten_seconds_apart():
    from agent.onegate import ReadyPolicy

    calls, sleeps = [], []

    def run(argv, **kwargs):
        from agent.command import RunResult

        calls.append(argv)
        return RunResult(0 if len(calls) == 3 else 1, "")

    policy = ReadyPolicy.from_variables({"READY_SCRIPT": "check"})
    assert policy.check(Root(), run=run, sleep=sleeps.append) is None
    assert len(calls) == 3 and sleeps == [10.0, 10.0]
    assert calls[0][:2] == ["/bin/bash", "-c"]


# --------------------------------------------------------------------------- the re-send timer


def test_resend_command_flushes_the_queue_and_says_whether_one_waits(emulator, root, tmp_path):
    from agent.context import render_context
    from agent.onegate.__main__ import main

    cd = tmp_path / "cd"
    cd.mkdir()
    (cd / "token.txt").write_text(TOKEN + "\n")
    variables = {"ONEGATE_ENDPOINT": emulator.endpoint, "VMID": str(VMID), "FL_GPU_ENABLED": "?"}
    (cd / "context.sh").write_text(render_context(variables))  # FL_* invalid: still reports
    argv = ["flush", "--root", str(root.prefix), "--context-file", str(cd / "context.sh")]
    assert main(argv) == 0 and emulator.requests == []  # nothing queued: nothing asked
    emulator.stop()
    reporter_for(emulator, root, timeout=0.2).send(*state_report("RUNNING", ready=True))
    new_run()
    assert main([*argv, "--timeout", "0.5"]) == 3  # still down: it waits for the next tick
    emulator.start()
    new_run()
    assert main(argv) == 0
    assert emulator.user_template(VMID)["READY"] == "YES"
    assert reporter_for(emulator, root).pending() == 0
