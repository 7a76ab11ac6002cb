"""A boot driven without a Docker engine: facts handed to the plan, the invalid-config path,
OneGate's reports in order, and a dry run that changes nothing and exits as the boot would."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent.boot import BootOptions, Facts, Progress, Session, apply, boot, plan_boot
from agent.config import build_config
from agent.context import Platform, Secret
from agent.discovery import Discovery
from agent.errors import Problem
from agent.outcome import BootState, ExitCode, Mode, Verdict, exit_code
from agent.paths import Root
from agent.plan import ActionKind, ImageFacts
from agent.validation import ValidationReport
from emulators.onegate import OneGateEmulator
from tests.context_cd import write_context_cd
from tests.fixtures_gpu import (
    gpu_vm,
    h100,
    load_driver,
    nvml_env,
    nvml_stub,  # noqa: F401  (a fixture)
    run_python,
)

VMID = 42
TOKEN = "tok-pipeline-42"
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
IMAGE = "fl-agent-test/supernode-standin:ok"


@pytest.fixture
def onegate():
    with OneGateEmulator() as em:
        em.add_vm(VMID, token=TOKEN)
        yield em


@pytest.fixture
def no_engine(monkeypatch):
    for name, value in NO_ENGINE.items():
        monkeypatch.setenv(name, value)


def context_file(tmp_path: Path, onegate: OneGateEmulator | None = None, **variables) -> Path:
    directory = tmp_path / "cd"
    directory.mkdir(exist_ok=True)
    base = {
        "FL_SUPERLINK_ADDRESS": "127.0.0.1:9092",
        "FL_TLS_ENABLED": "NO",
        "FL_SUPERNODE_IMAGE": IMAGE,
    }
    if onegate is not None:
        base.update(ONEGATE_ENDPOINT=onegate.endpoint, VMID=str(VMID), TOKEN="YES")
    return write_context_cd(directory, {**base, **variables}, TOKEN if onegate else None)


def states(onegate: OneGateEmulator) -> list[dict[str, str]]:
    """Each state update the server received, in order."""
    out = []
    for request in onegate.requests:
        if request.method == "PUT" and request.params.get("type") == "1":
            out.append(dict(line.split("=", 1) for line in request.data_lines))
    return [u for u in out if "FL_STATE" in u]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under the root: its mode, its modification time and its content's hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        status = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (status.st_mode, status.st_mtime_ns, digest)
    return out


# --- whole boots that stop before the engine


def test_invalid_config_reports_booting_then_failed_and_exits_2(tmp_path, onegate, no_engine):
    ctx = context_file(tmp_path, onegate, FL_GPU_ENABLED="perhaps")
    root = Root(tmp_path / "root")
    outcome = boot(root, ctx)
    assert outcome.exit_code == ExitCode.INVALID
    assert [u["FL_STATE"] for u in states(onegate)] == ["BOOTING", "FAILED"]
    assert states(onegate)[-1]["FL_ERROR"].startswith("invalid_value: invalid value 'perhaps'")
    held = onegate.user_template(VMID)
    assert held["FL_STATE"] == "FAILED" and "READY" not in held
    record = json.loads((root.state_dir / "state.json").read_text())
    assert record["state"] == "FAILED" and record["invalid_config"] is True
    assert record["problems"][0]["subject"] == "FL_GPU_ENABLED"
    assert "All set" not in root.path("/etc/motd").read_text()


def test_no_engine_is_failed_after_configuring_with_docker_unavailable(
    tmp_path, onegate, no_engine
):
    ctx = context_file(tmp_path, onegate, FL_GPU_ENABLED="NO")
    outcome = boot(Root(tmp_path / "root"), ctx, BootOptions(docker_timeout_s=0.3))
    assert outcome.exit_code == ExitCode.FAILED
    assert [u["FL_STATE"] for u in states(onegate)] == ["BOOTING", "CONFIGURING", "FAILED"]
    assert states(onegate)[-1]["FL_ERROR"].startswith("docker_unavailable: ")
    assert outcome.record.problems[0].name == "docker_unavailable"


# --- facts handed to the plan and to apply


def facts(config_variables: dict[str, str] | None = None, **changes) -> Facts:
    result = build_config(
        {
            "FL_SUPERLINK_ADDRESS": "127.0.0.1:9092",
            "FL_TLS_ENABLED": "NO",
            **(config_variables or {}),
        }
    )
    base = {
        "platform": Platform(),
        "config": result.config,
        "context_source": "test",
        "blocking": result.problems,
        "invalid_config": not result.ok,
        "image": ImageFacts(IMAGE, True, "49999"),
        "discovery": Discovery("127.0.0.1:9092", None, "partition-id=0"),
        "data_dir_host": "/nonexistent/data",
    }
    return Facts(**{**base, **changes})


def failed_report(stage: str, name: str, requested: str = "AUTO") -> ValidationReport:
    return ValidationReport(
        Verdict.FAILED,
        Mode.CPU,
        requested,
        (),
        None,
        None,
        stage,
        Problem(name, stage, f"{stage} failed", "fix it"),
    )


PLANS = [
    ("cpu by choice", {"FL_GPU_ENABLED": "NO"}, None, BootState.RUNNING, ExitCode.OK),
    (
        "toolkit will be installed",
        {},
        failed_report("toolkit", "toolkit_missing"),
        BootState.RUNNING,
        ExitCode.OK,
    ),
    (
        "toolkit never installed",
        {"FL_TOOLKIT_INSTALL": "NEVER"},
        failed_report("toolkit", "toolkit_missing"),
        BootState.DEGRADED,
        ExitCode.DEGRADED,
    ),
    (
        "gpu required",
        {"FL_GPU_REQUIRED": "YES"},
        failed_report("driver", "gpu_driver_not_loaded"),
        BootState.FAILED,
        ExitCode.FAILED,
    ),
    ("invalid config", {"FL_GPU_ENABLED": "perhaps"}, None, BootState.FAILED, ExitCode.INVALID),
]


@pytest.mark.parametrize(("why", "variables", "report", "state", "code"), PLANS)
def test_a_plan_from_handed_facts_ends_as_planned(why, variables, report, state, code):
    handed = facts(variables)
    plan = plan_boot(handed, report)
    assert plan.state == state, why
    assert exit_code(plan.state, invalid_config=handed.invalid_config) == code


def test_apply_of_a_blocked_plan_sends_only_the_outcome_and_never_ready(tmp_path, onegate):
    from agent.onegate import Reporter

    platform = Platform(onegate.endpoint, str(VMID), Secret(TOKEN))
    session = Session(Root(tmp_path / "root"), BootOptions())
    session.progress = Progress(Reporter.from_platform(platform, session.root), session.options)
    gone = Problem("docker_unavailable", "docker", "no engine", "start it")
    handed = facts(blocking=(gone,), platform=platform)
    plan = plan_boot(handed, None)
    assert [a.kind for a in plan.actions] == [ActionKind.RECORD]
    outcome = apply(session, plan, handed, None)
    assert outcome.exit_code == ExitCode.FAILED
    assert [u["FL_STATE"] for u in states(onegate)] == ["FAILED"]
    assert states(onegate)[0]["FL_ERROR"] == "docker_unavailable: no engine"
    assert "READY" not in onegate.user_template(VMID)
    saved = json.loads((session.root.state_dir / "state.json").read_text())
    assert saved["problems"][0]["name"] == "docker_unavailable"


# --- --dry-run: no change under the root, the exit code of the plan

_DRY_BOOT = """
import json, sys
from pathlib import Path
from agent.boot import BootOptions, boot
from agent.paths import Root
args = json.loads(sys.argv[1])
outcome = boot(Root(Path(args["root"])), Path(args["context"]),
               BootOptions(dry_run=True, docker_timeout_s=0.3))
print(json.dumps({"code": int(outcome.exit_code), "record": outcome.record.to_dict()}))
"""

DRY = [
    ({}, ExitCode.OK, "GPU"),  # the toolkit would be installed first
    ({"FL_TOOLKIT_INSTALL": "NEVER"}, ExitCode.DEGRADED, "CPU"),
    ({"FL_TOOLKIT_INSTALL": "NEVER", "FL_GPU_REQUIRED": "YES"}, ExitCode.FAILED, "NONE"),
    ({"FL_GPU_ENABLED": "perhaps"}, ExitCode.INVALID, None),
]


@pytest.mark.parametrize(("variables", "code", "mode"), DRY)
def test_dry_run_changes_nothing_under_the_root_and_exits_as_the_boot_would(
    tmp_path,
    nvml_stub,  # noqa: F811
    variables,
    code,
    mode,
):
    root = load_driver(gpu_vm(tmp_path / "root", "nvidia"))
    markers = root / "run/fl-agent/validations"
    markers.mkdir(parents=True)
    (markers / "toolkit-ready").write_text("stale")
    (root / "var/lib/fl-agent").mkdir(parents=True)
    (root / "var/lib/fl-agent/state.json").write_text('{"state": "RUNNING"}\n')
    ctx = context_file(tmp_path, **variables)
    before = snapshot(root)
    env = {**nvml_env(nvml_stub, h100(), tmp_path), **NO_ENGINE}
    payload = json.dumps({"root": str(root), "context": str(ctx)})
    result = run_python(_DRY_BOOT, [payload], env)
    assert snapshot(root) == before
    assert result["code"] == code
    record = result["record"]
    assert record["dry_run"] is True
    if mode is not None:
        assert record["plan"]["mode"] == mode
        assert record["validation"]["failed_stage"] == "toolkit"


# --- the data directory (issue 17): created when absent, never changed when there


def test_an_absent_data_dir_is_created_0755_whatever_the_umask(tmp_path):
    import os

    from agent.boot import _prepare_data_dir

    target = tmp_path / "opt/flower/data"
    old = os.umask(0o077)
    try:
        _prepare_data_dir(target)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o755


def test_an_existing_data_dir_is_left_as_it_is(tmp_path):
    existing = tmp_path / "data"
    existing.mkdir(mode=0o700)
    handed = facts(data_dir_host=str(existing), data_dir_exists=True)
    plan = plan_boot(handed, None)
    assert not plan.has(ActionKind.PREPARE_DATA_DIR)
    absent = plan_boot(facts(data_dir_host=str(tmp_path / "new"), data_dir_exists=False), None)
    assert absent.has(ActionKind.PREPARE_DATA_DIR)
    assert existing.stat().st_mode & 0o777 == 0o700


# --- the toolkit installed by the boot, the validation resumed from its stage

_BOOT = """
import json, sys
from pathlib import Path
from agent.boot import BootOptions, boot
from agent.paths import Root
args = json.loads(sys.argv[1])
outcome = boot(Root(Path(args["root"])), Path(args["context"]), BootOptions(stability_s=0.5))
print(json.dumps({"code": int(outcome.exit_code), "record": outcome.record.to_dict()}))
"""


@pytest.mark.docker
def test_a_boot_installs_the_toolkit_and_resumes_from_its_stage(
    tmp_path,
    nvml_stub,  # noqa: F811
    standin_images,
    no_supernode,
):
    from tests.toolkit_repo import bake_packages

    root = load_driver(gpu_vm(tmp_path / "root", "nvidia"))
    bake_packages(root, tmp_path / "debs")
    ctx = context_file(tmp_path, FL_SUPERNODE_IMAGE=standin_images["ok"])
    payload = json.dumps({"root": str(root), "context": str(ctx)})
    result = run_python(_BOOT, [payload], nvml_env(nvml_stub, h100(), tmp_path))
    record, validation = result["record"], result["record"]["validation"]
    # installed, then validated again from the toolkit stage; the tree has no dockerd of its own
    # (its start time unknown: the hook counts as registered), but this machine's engine has no
    # NVIDIA device driver: the container stage fails as moby does, and the node runs on CPU
    assert result["code"] == ExitCode.DEGRADED and record["mode"] == "CPU"
    assert validation["toolkit"]["steps"][0].startswith("dpkg -i 2 baked packages: exit 0")
    statuses = {s["name"]: s["status"] for s in validation["stages"]}
    stages_seen = [statuses[s] for s in ("pci", "driver", "nvml", "toolkit", "container")]
    assert stages_seen == ["ok", "ok", "ok", "ok", "fail"]
    assert validation["problem"]["name"] == "gpu_runtime_unavailable"
    assert (root / "usr/bin/nvidia-ctk").exists()
    assert "apt-mark hold: exit 0" in validation["toolkit"]["steps"]
    assert "Status: hold ok installed" in (root / "var/lib/dpkg/status").read_text()
    markers = sorted(p.name for p in (root / "run/fl-agent/validations").iterdir())
    assert markers == ["driver-ready", "fabric-ready", "nvml-ready", "pci-ready", "toolkit-ready"]
    assert record["last_reported_state"] == "DEGRADED"
