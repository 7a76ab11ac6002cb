"""`fl-agent watch`: the decisions (pure), then the real loop against the NVML stand-in and the
OneGate emulator (XID events), then GPU-mode containers on a private engine (lost GPU access,
the SuperNode's log)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.gpu.health import GpuEvent, GpuHealth, HealthFacts
from agent.onegate import ATTRIBUTES
from agent.paths import Root
from agent.reconverge import watch_confirmed_loss
from agent.supernode_status import LogState, SupernodeStatus
from agent.watch import (
    CONFIRM_OBSERVATIONS,
    GpuLoss,
    WatchState,
    _kept,
    load_state,
    observe_loss,
    status_attributes,
    target_from_record,
    to_send,
    watch_state_path,
)
from emulators.onegate import OneGateEmulator
from tests.context_cd import write_context_cd
from tests.fixtures_gpu import H100_UUID, REPO, h100, nvml_env, nvml_stub  # noqa: F401
from tests.test_gpu_access import STANDIN, gpu_engine  # noqa: F401 - the private GPU engine

OTHER_UUID = "GPU-7e000000-2222-4a2b-9c3d-0123456789ab"
VMID = 42
NOW = "2026-11-30T12:00:00Z"


def record(mode: str = "GPU", device_ids: tuple[str, ...] = (H100_UUID,), **spec) -> dict:
    """The part of a boot record the watch reads (agent/record.py's shape)."""
    spec = {"name": "flower-supernode", "gpu_device_ids": list(device_ids), **spec}
    spec["spec_hash"] = "abc"
    return {
        "state": "RUNNING",
        "plan": {"spec": spec, "fallback": None},
        "container": {"container_id": "c0ffee", "mode": mode, "spec_hash": "abc"},
        "validation": {"selected": None, "facts": {"nvml": {"gpus": [{"uuid": H100_UUID}]}}},
    }


# --- decisions ---


def test_target_from_the_boot_record():
    target = target_from_record(record())
    assert (target.name, target.container_id, target.mode) == ("flower-supernode", "c0ffee", "GPU")
    assert target.expected == (H100_UUID,)
    assert target_from_record(record(device_ids=())).expected == (H100_UUID,)  # all: inventory
    assert target_from_record(record("CPU")).expected == ()
    assert target_from_record({"state": "FAILED", "container": None}) is None
    assert target_from_record(None) is None


def healthy(*uuids: str) -> HealthFacts:
    return HealthFacts(True, tuple(GpuHealth(i, u) for i, u in enumerate(uuids)))


def test_a_loss_is_confirmed_only_on_consecutive_observations():
    loss = GpuLoss()
    gone = healthy(OTHER_UUID)
    for n in range(1, CONFIRM_OBSERVATIONS):
        loss = observe_loss(loss, gone, (H100_UUID,), NOW)
        assert (loss.observations, loss.confirmed) == (n, False)
    # a good reading in between starts the count again
    assert observe_loss(loss, healthy(H100_UUID), (H100_UUID,), NOW) == GpuLoss()
    # NVML not answering at all is not evidence either way
    assert observe_loss(loss, HealthFacts(False), (H100_UUID,), NOW) == loss
    assert observe_loss(loss, None, (H100_UUID,), NOW) == loss
    loss = observe_loss(
        loss, HealthFacts(True, (GpuHealth(0, None, lost=True),)), (H100_UUID,), "t"
    )
    assert loss.confirmed and loss.uuids == (H100_UUID,) and loss.since == NOW


def test_only_what_changed_is_sent():
    assert to_send({}, {"FL_GPU_HEALTH": "OK"}) == ({"FL_GPU_HEALTH": "OK"}, ())
    assert to_send({"FL_GPU_HEALTH": "OK"}, {"FL_GPU_HEALTH": "OK"}) == ({}, ())
    sent = {"FL_GPU_HEALTH": "OK", "FL_GPU_LAST_XID": "13"}
    assert to_send(sent, {"FL_GPU_HEALTH": "OK"}) == ({}, ("FL_GPU_LAST_XID",))


def test_every_attribute_of_the_watch_is_in_the_onegate_table():
    state = WatchState(
        health={"FL_GPU_HEALTH": "OK", "FL_GPU_HEALTH_DETAIL": "all GPUs healthy"},
        log_container="c0ffee",
        supernode=LogState(SupernodeStatus.CONNECTED),
        access={"state": "lost_access", "reason": "unknown_error", "repair": "restart at t: ok"},
    )
    shown = status_attributes(state)
    assert shown["FL_SUPERNODE_STATUS"] == "CONNECTED"
    assert shown["FL_GPU_ACCESS"] == "LOST_ACCESS:unknown_error"
    assert set(shown) <= set(ATTRIBUTES)
    from agent.gpu.health import ATTRIBUTES as HEALTH

    assert set(HEALTH) <= set(ATTRIBUTES)
    assert "READY" not in shown


def test_reset_class_events_outlive_the_others_in_the_kept_window():
    events: tuple[GpuEvent, ...] = (GpuEvent("xid", H100_UUID, 0.0, 48),)
    for i in range(1, 100):
        events = _kept(events, GpuEvent("xid", H100_UUID, float(i), 13))
    assert events[0].xid == 48 and len(events) <= 32 and events[-1].at == 99.0


def test_state_is_kept_within_a_boot_and_reset_by_a_reboot(tmp_path):
    root = Root(tmp_path)
    boot_id = tmp_path / "proc/sys/kernel/random/boot_id"
    boot_id.parent.mkdir(parents=True)
    boot_id.write_text("one\n")
    from agent.state import write_private_json

    state = WatchState(
        boot_id="one",
        sent={"FL_GPU_HEALTH": "FAILED"},
        events=(GpuEvent("xid", H100_UUID, 1.0, 79),),
        loss=GpuLoss(CONFIRM_OBSERVATIONS, (H100_UUID,), NOW),
    )
    write_private_json(watch_state_path(root), state.to_dict(), "watch")
    assert watch_state_path(root).stat().st_mode & 0o777 == 0o600
    assert load_state(root).events == state.events
    assert watch_confirmed_loss(root) == (H100_UUID,)  # what the re-convergence reads
    boot_id.write_text("two\n")
    fresh = load_state(root)
    assert fresh.events == () and fresh.sent == state.sent and fresh.boot_id == "two"


# --- the real loop: NVML stand-in events to the OneGate emulator ---


@pytest.fixture
def onegate():
    with OneGateEmulator() as em:
        em.add_vm(VMID, token="tok-42")
        yield em


def watch_tree(tmp_path: Path, onegate, rec: dict) -> tuple[Path, Path]:
    """A root with a boot record and a context; the context file's path."""
    root = tmp_path / "root"
    (root / "var/lib/fl-agent").mkdir(parents=True)
    (root / "var/lib/fl-agent/state.json").write_text(json.dumps(rec))
    variables = {"ONEGATE_ENDPOINT": onegate.endpoint, "VMID": str(VMID), "TOKEN": "YES"}
    return root, write_context_cd(tmp_path / "cd", variables, "tok-42")


def start_watch(root: Path, context: Path, env: dict, *args: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "agent", "--root", str(root), "watch"]
    argv += ["--context-file", str(context), *args]
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def updates(em) -> list[dict[str, str]]:
    out = []
    for request in em.requests:
        if request.method == "PUT" and request.params.get("type") == "1":
            out.append(dict(line.split("=", 1) for line in request.data_lines))
    return out


def wait_for(predicate, timeout_s: float = 15.0, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_xid_events_reach_onegate_with_their_action_only_on_change(
    tmp_path,
    onegate,
    nvml_stub,  # noqa: F811
):
    root, context = watch_tree(tmp_path, onegate, record())
    trigger = tmp_path / "events.jsonl"
    trigger.write_text("")
    env = {**nvml_env(nvml_stub, h100(), tmp_path), "NVML_STUB_EVENTS": str(trigger)}
    env["DOCKER_HOST"] = f"unix://{tmp_path}/no-engine.sock"  # the engine is away: named, not fatal
    child = start_watch(root, context, env, "--interval", "1")
    try:
        first = wait_for(lambda: updates(onegate), what="the first report")
        assert first == [{"FL_GPU_HEALTH": "OK", "FL_GPU_HEALTH_DETAIL": "all GPUs healthy"}]
        time.sleep(2.5)  # two more ticks: nothing changed, nothing sent
        assert len(updates(onegate)) == 1

        def inject(xid: int) -> dict[str, str]:
            count = len(updates(onegate))
            with trigger.open("a") as f:
                f.write(json.dumps({"gpu": 0, "type": 8, "data": xid}) + "\n")
            return wait_for(lambda: updates(onegate)[count:], what=f"XID {xid}")[0]

        sent = inject(13)  # an application error: reported, the node stays OK
        assert sent["FL_GPU_LAST_XID"] == "13" and sent["FL_GPU_LAST_XID_ACTION"] == "restart_app"
        assert "FL_GPU_HEALTH" not in sent  # unchanged: OK
        sent = inject(48)  # double-bit ECC: the VM must reboot
        assert (sent["FL_GPU_HEALTH"], sent["FL_GPU_LAST_XID_ACTION"]) == ("FAILED", "reboot_vm")
        assert "XID 48: reboot_vm" in sent["FL_GPU_HEALTH_DETAIL"]
        sent = inject(79)  # fallen off the bus: the host
        assert sent["FL_GPU_LAST_XID"] == "79" and sent["FL_GPU_LAST_XID_ACTION"] == "restart_host"
        assert "FL_GPU_HEALTH" not in sent  # still FAILED
        settled = len(updates(onegate))
        time.sleep(2.5)
        assert len(updates(onegate)) == settled
        template = onegate.user_template(VMID)
        assert template["FL_GPU_HEALTH"] == "FAILED" and "READY" not in template

        # the state `fl-agent status` shows; the engine's absence is a named problem
        state = json.loads((root / "var/lib/fl-agent/watch.json").read_text())
        assert state["sent"]["FL_GPU_LAST_XID"] == "79"
        named = {p["name"] for p in state["problems"]}
        assert named == {"supernode_log_unreadable", "gpu_access_unchecked"}
        status = subprocess.run(
            [sys.executable, "-m", "agent", "--root", str(root), "status", "--json"],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        shown = json.loads(status.stdout)["watch"]["attributes"]
        assert shown["FL_GPU_HEALTH"] == "FAILED" and shown["FL_GPU_LAST_XID"] == "79"
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=15)
    assert child.returncode == 0, err[-2000:]
    assert '"watch stopped"' in err and "tok-42" not in out + err


def test_a_restarted_watch_keeps_the_reset_class_event_of_this_boot(
    tmp_path,
    onegate,
    nvml_stub,  # noqa: F811
):
    root, context = watch_tree(tmp_path, onegate, record())
    state = WatchState(events=(GpuEvent("xid", H100_UUID, 1.0, 48),))
    write = root / "var/lib/fl-agent/watch.json"
    write.write_text(json.dumps(state.to_dict()))  # boot id "" under a root without /proc
    env = nvml_env(nvml_stub, h100(), tmp_path)
    env["DOCKER_HOST"] = f"unix://{tmp_path}/no-engine.sock"
    child = start_watch(root, context, env, "--once")
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    (sent,) = updates(onegate)
    assert (sent["FL_GPU_HEALTH"], sent["FL_GPU_LAST_XID"]) == ("FAILED", "48")


def test_a_cpu_node_without_nvml_reports_no_gpu_health(tmp_path, onegate):
    root, context = watch_tree(tmp_path, onegate, record("CPU", ()))
    env = nvml_env(None, None, tmp_path)  # no NVML library at all
    env["DOCKER_HOST"] = f"unix://{tmp_path}/no-engine.sock"
    child = start_watch(root, context, env, "--once")
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert not any("FL_GPU_HEALTH" in u for u in updates(onegate))


def test_bad_interval_is_refused():
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "watch", "--interval", "0"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 2 and "--interval" in proc.stderr


# --- GPU-mode containers on a private engine: lost access restored, the SuperNode's log ---

INTERVAL_S = 4


def standin_spec():
    """The SuperNode's spec as a plan makes it, for the stand-in GPU image: the per-start
    tmpfs is where the stand-in keeps its lost access (tests/images/gpu-standin)."""
    from agent.outcome import Mode
    from agent.plan import ContainerSpec

    return ContainerSpec(
        image=STANDIN,
        command=(),
        environment=(("FLWR_LOG_LEVEL", "INFO"),),
        mode=Mode.GPU,
        runtime=None,
        gpu_device_ids=(H100_UUID,),
        tmpfs=(("/run/gpu-standin", "rw"),),
        network_mode="none",
    )


def boot_record(spec, container_id: str) -> dict:
    return {
        "state": "RUNNING",
        "plan": {"spec": spec.to_dict(), "fallback": None},
        "container": {"container_id": container_id, "mode": "GPU", "spec_hash": spec.spec_hash},
    }


def say(engine, line: str) -> None:
    """A line on the container's own output, as the SuperNode prints it."""
    engine.docker("exec", "flower-supernode", "sh", "-c", f"echo '{line}' >/proc/1/fd/1")


def container_id(engine) -> str:
    return engine.docker("inspect", "-f", "{{.Id}}", "flower-supernode").stdout.strip()


@pytest.mark.docker
def test_the_watch_restores_lost_gpu_access_and_follows_the_supernode_log(
    tmp_path,
    onegate,
    nvml_stub,  # noqa: F811
    gpu_engine,  # noqa: F811
):
    from agent.engine import Engine, create_body

    spec = standin_spec()
    engine = Engine(gpu_engine.host)
    first = engine.create(create_body(spec), spec.name)
    engine.start(first)
    root, context = watch_tree(tmp_path, onegate, boot_record(spec, first))
    env = {**nvml_env(nvml_stub, h100(), tmp_path), "DOCKER_HOST": gpu_engine.host}
    child = start_watch(root, context, env, "--interval", str(INTERVAL_S))

    def template() -> dict:
        return onegate.user_template(VMID)

    try:
        wait_for(lambda: template().get("FL_GPU_ACCESS") == "OK", 30, "access checked")
        assert template()["FL_SUPERNODE_STATUS"] == "STARTING"
        say(gpu_engine, "INFO :      SuperNode ID: 4242")
        wait_for(lambda: template().get("FL_SUPERNODE_STATUS") == "CONNECTED", 15, "connected")
        say(gpu_engine, "WARNING :   Connection attempt failed, retrying in 2.41 seconds")
        wait_for(lambda: template().get("FL_SUPERNODE_STATUS") == "RECONNECTING", 15, "retrying")

        # A daemon-reload took the GPUs away (per start state): a restart brings them back.
        gpu_engine.docker("exec", "flower-supernode", "sh", "-c", "touch /run/gpu-standin/lost")
        lost_at = time.monotonic()
        repaired = wait_for(
            lambda: "restart at" in template().get("FL_GPU_ACCESS_REPAIR", ""), 30, "the restart"
        )
        assert time.monotonic() - lost_at < INTERVAL_S + 10  # within one interval (+ the restart)
        assert repaired and template()["FL_GPU_ACCESS_REPAIR"].endswith(": restored")
        assert template()["FL_GPU_ACCESS"] == "OK" and container_id(gpu_engine) == first
        smi = gpu_engine.docker("exec", "flower-supernode", "nvidia-smi", "-L")
        assert H100_UUID in smi.stdout
        assert template()["FL_SUPERNODE_STATUS"] == "RECONNECTING"  # same container, same log

        # A loss the restart cannot clear: the recreate from the boot's spec does.
        gpu_engine.docker(
            "exec", "flower-supernode", "sh", "-c", "mkdir -p /var/lib/gpu-standin; "
            "touch /var/lib/gpu-standin/lost"
        )  # fmt: skip
        wait_for(
            lambda: "restart then recreate" in template().get("FL_GPU_ACCESS_REPAIR", ""),
            40,
            "the recreate",
        )
        assert template()["FL_GPU_ACCESS_REPAIR"].endswith(": restored")
        second = container_id(gpu_engine)
        assert second != first
        labels = json.loads(
            gpu_engine.docker("inspect", "-f", "{{json .Config.Labels}}", second).stdout
        )
        assert labels["fl-agent.spec-hash"] == spec.spec_hash  # a re-convergence keeps it
        wait_for(lambda: template().get("FL_SUPERNODE_STATUS") == "STARTING", 15, "a new log")
        assert "READY" not in template()
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err[-3000:]


@pytest.mark.docker
def test_a_loss_no_repair_clears_is_reported_once_not_repaired_at_every_tick(
    tmp_path,
    onegate,
    nvml_stub,  # noqa: F811
    gpu_engine,  # noqa: F811
):
    """Given every GPU (`--gpus all`), the stand-in lists none of the host's: neither the
    restart nor the recreate brings the UUID in, so the watch says so and stops there."""
    from dataclasses import replace

    from agent.engine import Engine, create_body

    spec = replace(standin_spec(), gpu_device_ids=(), gpu_count=-1)
    engine = Engine(gpu_engine.host)
    engine.start(engine.create(create_body(spec), spec.name))
    rec = boot_record(spec, "gone")
    rec["validation"] = {"selected": None, "facts": {"nvml": {"gpus": [{"uuid": H100_UUID}]}}}
    root, context = watch_tree(tmp_path, onegate, rec)
    env = {**nvml_env(nvml_stub, h100(), tmp_path), "DOCKER_HOST": gpu_engine.host}
    child = start_watch(root, context, env, "--interval", str(INTERVAL_S))
    try:
        repair = wait_for(
            lambda: onegate.user_template(VMID).get("FL_GPU_ACCESS_REPAIR"), 40, "the ladder"
        )
        assert repair.startswith("restart then recreate at") and repair.endswith(": still lost")
        assert onegate.user_template(VMID)["FL_GPU_ACCESS"] == "LOST_ACCESS:missing_uuids"
        recreated = container_id(gpu_engine)
        time.sleep(3 * INTERVAL_S)  # three more ticks: no more repairs
        assert container_id(gpu_engine) == recreated
        assert onegate.user_template(VMID)["FL_GPU_ACCESS_REPAIR"] == repair
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err[-3000:]
    assert err.count('"gpu access repair"') == 1
