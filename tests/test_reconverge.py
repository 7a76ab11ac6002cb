"""The periodic re-convergence: the last boot's GPU mode kept whatever a probe would say, changed
only by a confirmed loss (agent/reconverge.py); by facts, then for real on a private engine that
runs GPU-mode containers through a no-op NVIDIA hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.boot import plan_boot
from agent.context import render_context
from agent.errors import Problem
from agent.gpu.health import GpuHealth, HealthFacts
from agent.outcome import BootState, Mode
from agent.paths import Root
from agent.plan import ActionKind, Established
from agent.reconverge import established, host_loss, watch_confirmed_loss
from tests.fixtures_gpu import (
    A100_UUIDS,
    H100_UUID,
    gpu_vm,
    h100,
    load_driver,
    nvml_env,
    nvml_stub,  # noqa: F401  (a fixture)
    run_python,
)
from tests.test_boot_pipeline import facts

NAME = "flower-supernode"
BOOT_ID = "3f0c9d4e-0000-4000-8000-000000000001"


def healthy(*uuids: str) -> HealthFacts:
    return HealthFacts(True, tuple(GpuHealth(i, u) for i, u in enumerate(uuids)))


def gpu_record(**changes) -> dict:
    """A state file as a boot that runs the SuperNode on the first A100 leaves it."""
    record = {
        "state": "RUNNING",
        "mode": "GPU",
        "plan": {"spec": {"gpu_device_ids": [A100_UUIDS[0]]}},
        "container": {"container_id": "abc", "mode": "GPU"},
    }
    return {**record, **changes}


def no_health() -> HealthFacts:
    raise AssertionError("NVML is not read for a node without a GPU container")


# --- what is observed


def test_host_nvml_gone_or_lost_is_a_loss_and_silence_is_not():
    given = A100_UUIDS[:1]
    assert host_loss(healthy(*A100_UUIDS), given) == ()
    assert host_loss(healthy(A100_UUIDS[1]), given) == given  # gone: no longer listed
    lost = HealthFacts(True, (GpuHealth(0, None, lost=True), GpuHealth(1, A100_UUIDS[0])))
    assert host_loss(lost, given) == given  # NVML may not name the GPU that fell off
    refused = Problem("nvml_unavailable", "nvml", "driver not loaded", "x")
    assert host_loss(HealthFacts(False, problem=refused), given) == ()
    assert host_loss(healthy(), ()) == ()


def write_watch(root: Root, boot_id: str, confirmed: bool, uuid: str = A100_UUIDS[0]) -> None:
    """watch.json as agent/watch.py writes it (its `gpu_loss`), other keys left out."""
    loss = {"observations": 3 if confirmed else 2, "uuids": [uuid], "since": "t"}
    state = {"boot_id": boot_id, "gpu_loss": {**loss, "confirmed": confirmed}}
    root.state_dir.mkdir(parents=True, exist_ok=True)
    (root.state_dir / "watch.json").write_text(json.dumps(state))


def test_the_watchs_confirmed_loss_counts_within_this_vm_boot_only(tmp_path):
    root = Root(tmp_path)
    assert watch_confirmed_loss(root) == ()
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
    write_watch(root, BOOT_ID, confirmed=False)
    assert watch_confirmed_loss(root) == ()
    write_watch(root, BOOT_ID, confirmed=True)
    assert watch_confirmed_loss(root) == A100_UUIDS[:1]
    write_watch(root, "an-earlier-boot", confirmed=True)  # the reboot reset the GPUs
    assert watch_confirmed_loss(root) == ()


def test_the_mode_established_comes_from_the_state_file(tmp_path):
    root = Root(tmp_path)
    kept = established(root, gpu_record(), lambda: healthy(*A100_UUIDS))
    assert kept == Established(Mode.GPU, A100_UUIDS[:1], request_all=False)
    gone = established(root, gpu_record(), lambda: healthy(A100_UUIDS[1]))
    assert gone is not None and gone.lost == A100_UUIDS[:1]
    why = {"name": "gpu_start_failed", "subject": NAME, "message": "refused", "fix": "x"}
    degraded = established(
        root, gpu_record(state="DEGRADED", mode="CPU", problems=[why]), no_health
    )
    assert degraded == Established(Mode.CPU, problem=Problem(**why))
    assert established(root, gpu_record(mode="CPU"), no_health) == Established(Mode.CPU)
    for nothing_runs in (None, gpu_record(state="FAILED", mode="NONE")):
        assert established(root, nothing_runs, no_health) is None


# --- the plan over the facts, without an engine


def test_a_periodic_plan_keeps_the_gpu_and_repairs_nothing_on_the_gpu_stack():
    kept = Established(Mode.GPU, A100_UUIDS[:1], request_all=False)
    plan = plan_boot(facts(established=kept, periodic=True), None)
    assert plan.mode == Mode.GPU and plan.state == BootState.RUNNING
    assert dict(plan.spec.environment)["CUDA_VISIBLE_DEVICES"] == A100_UUIDS[0]
    kinds = {a.kind for a in plan.actions}
    assert kinds.isdisjoint(
        {ActionKind.INSTALL_TOOLKIT, ActionKind.WRITE_VALIDATION, ActionKind.DEV_CHAR_LINKS}
    )


@pytest.mark.parametrize(
    ("variables", "state", "mode"),
    [({}, BootState.DEGRADED, Mode.CPU), ({"FL_GPU_REQUIRED": "YES"}, BootState.FAILED, None)],
)
def test_a_confirmed_loss_plans_as_fl_gpu_required_says(variables, state, mode):
    lost = Established(Mode.GPU, lost=A100_UUIDS[:1])
    plan = plan_boot(facts(variables, established=lost, periodic=True), None)
    assert plan.state == state and plan.problems[0].name == "gpu_lost_confirmed"
    assert (plan.spec.mode if plan.spec else None) == mode


# --- for real: GPU-mode containers on a private engine

_FIRST_BOOT = """
import json, sys
from dataclasses import replace
from pathlib import Path
from agent.boot import BootOptions, Session, apply, observe, plan_inputs
from agent.outcome import Verdict
from agent.paths import Root
from agent.plan import GpuVerdict, make_plan
args = json.loads(sys.argv[1])
session = Session(Root(Path(args["root"])), BootOptions(stability_s=1))
facts = observe(session, Path(args["context"]))
gpu = GpuVerdict(Verdict.PASSED, (args["uuid"],), request_all=False)
plan = make_plan(facts.config, replace(plan_inputs(facts, None), gpu=gpu))
print(json.dumps(apply(session, plan, facts, None).record.to_dict()))
"""


@pytest.fixture
def gpu_engine(tmp_path, standin_images):
    """A private engine whose dockerd has a no-op NVIDIA hook on its PATH: `--gpus` works."""
    from bench.engine import PrivateEngine

    if os.geteuid() != 0:
        pytest.skip("a private dockerd needs root")
    hook_dir = tmp_path / "bin"
    hook_dir.mkdir()
    hook = hook_dir / "nvidia-container-runtime-hook"
    hook.write_text("#!/bin/sh\ncat >/dev/null\n")
    hook.chmod(0o755)
    with PrivateEngine(path_first=(str(hook_dir),), own_netns=True) as engine:
        engine.load_image(standin_images["ok"])
        yield engine


def gpu_node(tmp_path: Path, image: str) -> tuple[Path, Path]:
    """A VM root with an H100 whose validation would fail (no toolkit), and its context."""
    root = load_driver(gpu_vm(tmp_path / "root", "nvidia"))
    (root / "proc/devices").write_text("Character devices:\n195 nvidia\n510 nvidia-uvm\n")
    (root / "proc/sys/kernel/random").mkdir(parents=True)
    (root / "proc/sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
    ctx = tmp_path / "context.sh"
    variables = {
        "FL_SUPERLINK_ADDRESS": "127.0.0.1:9092",
        "FL_TLS_ENABLED": "NO",
        "FL_SUPERNODE_IMAGE": image,
        "FL_TOOLKIT_INSTALL": "NEVER",
    }
    ctx.write_text(render_context(variables))
    return root, ctx


def periodic(env: dict, root: Path, ctx: Path) -> tuple[int, dict]:
    argv = [sys.executable, "-m", "agent", "--root", str(root), "boot", "--periodic"]
    argv += ["--context-file", str(ctx), "--json", "--stability-window", "1"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def inspect(engine) -> tuple[str, str, bool]:
    """The SuperNode container's id, its mode label, and whether it asks for GPUs."""
    fmt = '{{.Id}} {{index .Config.Labels "fl-agent.mode"}} {{json .HostConfig.DeviceRequests}}'
    ident, mode, requests = engine.docker("inspect", "-f", fmt, NAME).stdout.split(" ", 2)
    return ident, mode, requests.strip() not in ("null", "[]")


def created_since(engine, since: float) -> int:
    """Containers the engine created since `since` (a probe container counts too)."""
    out = engine.docker(
        "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
        "--filter", "type=container", "--filter", "event=create", "--format", "{{.ID}}",
    ).stdout  # fmt: skip
    return len(out.split())


@pytest.mark.docker
def test_re_convergence_keeps_the_gpu_container_then_a_confirmed_loss_moves_it_to_cpu(
    tmp_path,
    gpu_engine,
    standin_images,
    nvml_stub,  # noqa: F811
):
    root, ctx = gpu_node(tmp_path, standin_images["ok"])
    env = {**nvml_env(nvml_stub, h100(), tmp_path), "DOCKER_HOST": gpu_engine.host}
    payload = json.dumps({"root": str(root), "context": str(ctx), "uuid": H100_UUID})
    first = run_python(_FIRST_BOOT, [payload], env)
    assert (first["state"], first["mode"]) == ("RUNNING", "GPU"), first
    # the boot made the NVIDIA nodes' /dev/char links (a daemon-reload keeps the GPUs)
    links = sorted(p.name for p in (root / "dev/char").iterdir())
    assert links == ["195:0", "195:254", "195:255", "510:0", "510:1"]
    booted = inspect(gpu_engine)
    assert booted[1:] == ("GPU", True)

    since = time.time()
    for _ in range(2):  # a full validation here would fail at the toolkit stage
        code, record = periodic(env, root, ctx)
        assert (code, record["state"], record["mode"]) == (0, "RUNNING", "GPU"), record
        assert inspect(gpu_engine) == booted
        assert record["container"]["action"] == "unchanged"
        assert record["plan"]["spec"]["gpu_device_ids"] == [H100_UUID]
    assert created_since(gpu_engine, since) == 0  # no probe container, no replacement

    write_watch(Root(root), BOOT_ID, True, H100_UUID)  # the watch confirmed the loss
    code, record = periodic(env, root, ctx)
    assert (code, record["state"], record["mode"]) == (3, "DEGRADED", "CPU"), record
    assert record["problems"][0]["name"] == "gpu_lost_confirmed"
    ident, mode, gpus = inspect(gpu_engine)
    assert ident != booted[0] and (mode, gpus) == ("CPU", False)
    code, record = periodic(env, root, ctx)  # and stays there until a real boot
    assert (code, record["mode"]) == (3, "CPU") and inspect(gpu_engine)[0] == ident


@pytest.mark.parametrize(
    "record",
    [
        {"state": "DEGRADED", "mode": "CPU", "problems": ["x"]},
        {"state": "DEGRADED", "mode": "CPU", "problems": [{"unexpected": 1}]},
        {"state": "RUNNING", "mode": "GPU", "plan": "x"},
    ],
)
def test_a_state_file_of_another_shape_is_no_traceback(tmp_path, record):
    found = established(Root(tmp_path), record, lambda: healthy(H100_UUID))
    assert found is not None and found.mode == record["mode"]


@pytest.mark.parametrize(
    "watch_json",
    ["[1]", '{"supernode": {"status": "BOGUS"}}', '{"gpu_loss": {"observations": 2}}',
     '{"problems": ["x"], "gpu_loss": {"observations": 1, "uuids": "x"}}'],
)  # fmt: skip
def test_status_and_the_next_watch_read_any_watch_state(tmp_path, watch_json):
    """An upgrade or a hand edit may leave a watch state this version does not write."""
    root = Root(tmp_path)
    root.state_dir.mkdir(parents=True)
    (root.state_dir / "watch.json").write_text(watch_json)
    shown = subprocess.run(
        [sys.executable, "-m", "agent", "--root", str(tmp_path), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in shown.stderr and shown.returncode == 1, shown.stderr
    assert watch_confirmed_loss(root) == ()
