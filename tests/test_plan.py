"""The plan is a pure function: every decision checked without a machine."""

from __future__ import annotations

import pytest

from agent.config import build_config
from agent.engine import create_body
from agent.errors import Problem
from agent.outcome import BootState, Mode
from agent.plan import (
    ActionKind,
    Established,
    GpuVerdict,
    ImageFacts,
    PlanInputs,
    make_plan,
)

UUIDS = ("GPU-11111111-1111-1111-1111-111111111111", "GPU-22222222-2222-2222-2222-222222222222")


def config(**variables: str):
    result = build_config({"FL_SUPERLINK_ADDRESS": "10.0.0.1:9092", **variables})
    assert result.ok, result.problems
    return result.config


IMAGE = "flwr/supernode:1.25.0"


def inputs(verdict: GpuVerdict, image_user: str | None = "49999:49999", **kwargs) -> PlanInputs:
    base = {
        "superlink": "10.0.0.1:9092",
        "node_config": "partition-id=0 num-partitions=2",
        "data_dir_host": "/opt/flower/data",
        "image": ImageFacts(IMAGE, image_user is not None, image_user),
    }
    base.update(kwargs)
    return PlanInputs(gpu=verdict, **base)


FAILED = GpuVerdict(
    "FAILED",
    problem=Problem("toolkit_missing", "toolkit", "no toolkit", "x"),
    failed_stage="toolkit",
)


def test_gpu_all_uses_count_minus_one_and_capabilities() -> None:
    plan = make_plan(config(), inputs(GpuVerdict("PASSED", UUIDS, request_all=True)))
    assert plan.mode == "GPU" and not plan.degraded
    spec = plan.spec
    assert spec.gpu_count == -1 and spec.gpu_device_ids == ()
    env = dict(spec.environment)
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(UUIDS)
    assert spec.runtime is None
    request = create_body(spec)["HostConfig"]["DeviceRequests"][0]
    assert request["Count"] == -1 and request["DeviceIDs"] == []
    assert request["Capabilities"] == [["gpu"]]
    assert plan.fallback is not None and plan.fallback.mode == "CPU"


def test_gpu_list_uses_device_ids_never_count() -> None:
    plan = make_plan(config(), inputs(GpuVerdict("PASSED", UUIDS[:1], request_all=False)))
    request = create_body(plan.spec)["HostConfig"]["DeviceRequests"][0]
    assert request["DeviceIDs"] == [UUIDS[0]] and request["Count"] == 0


def test_cpu_mode_is_cpu_for_certain() -> None:
    plan = make_plan(config(FL_GPU_ENABLED="NO"), inputs(GpuVerdict("CPU_ONLY")))
    assert plan.mode == "CPU" and plan.reason == "FL_GPU_ENABLED=NO"
    body = create_body(plan.spec)
    assert body["HostConfig"]["Runtime"] == "runc"
    assert "DeviceRequests" not in body["HostConfig"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in body["Env"]


def test_failed_gpu_falls_back_to_cpu_degraded() -> None:
    plan = make_plan(config(FL_TOOLKIT_INSTALL="NEVER"), inputs(FAILED))
    assert plan.mode == "CPU" and plan.degraded and plan.state == BootState.DEGRADED
    assert plan.problems[0].name == "toolkit_missing"
    assert not plan.has(ActionKind.INSTALL_TOOLKIT)


def test_a_missing_toolkit_is_installed_first_then_gpu_with_a_cpu_fallback() -> None:
    plan = make_plan(config(), inputs(FAILED, validated=True))
    assert plan.mode == "GPU" and plan.resume_from == "toolkit" and not plan.degraded
    assert plan.fallback is not None and plan.fallback.mode == "CPU"
    kinds = [a.kind for a in plan.actions]
    assert kinds == [
        ActionKind.INSTALL_TOOLKIT,
        ActionKind.WRITE_VALIDATION,
        ActionKind.CONVERGE,
        ActionKind.RECORD,
    ]
    tried = make_plan(config(), inputs(FAILED, validated=True, toolkit_tried=True))
    assert tried.mode == "CPU" and tried.degraded and tried.resume_from is None


def test_a_missing_image_is_pulled_first_and_the_gpu_stages_wait_for_it() -> None:
    missing = GpuVerdict(
        "FAILED", problem=Problem("supernode_image_missing", IMAGE, "x"), failed_stage="container"
    )
    plan = make_plan(config(), inputs(missing, image_user=None))
    pull = plan.actions[0]
    assert pull.kind == ActionKind.PULL_IMAGE and pull.target == config().supernode_image
    assert plan.mode == "GPU" and plan.resume_from == "container"
    cpu = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"), image_user=None))
    assert cpu.actions[0].kind == ActionKind.PULL_IMAGE and cpu.resume_from is None


def test_actions_write_the_ca_and_create_an_absent_data_dir() -> None:
    plan = make_plan(
        config(),
        inputs(
            GpuVerdict("CPU_ONLY"), ca_pem="PEM", ca_host_path="/x/ca.pem", data_dir_exists=False
        ),
    )
    kinds = [(a.kind, a.target) for a in plan.actions]
    assert kinds == [
        (ActionKind.WRITE_CA, "/x/ca.pem"),
        (ActionKind.PREPARE_DATA_DIR, "/opt/flower/data"),
        (ActionKind.CONVERGE, "flower-supernode"),
        (ActionKind.RECORD, ""),
    ]
    plain = make_plan(config(FL_TLS_ENABLED="NO"), inputs(GpuVerdict("CPU_ONLY"), ca_pem="PEM"))
    assert [a.kind for a in plain.actions] == [ActionKind.CONVERGE, ActionKind.RECORD]


def test_a_blocking_problem_plans_only_the_record() -> None:
    blocked = Problem("docker_unavailable", "docker", "no engine")
    plan = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"), blocking=(blocked,)))
    assert plan.spec is None and plan.state == BootState.FAILED
    assert plan.problems == (blocked,) and [a.kind for a in plan.actions] == [ActionKind.RECORD]


def test_failed_gpu_required_plans_nothing() -> None:
    plan = make_plan(config(FL_GPU_REQUIRED="YES", FL_TOOLKIT_INSTALL="NEVER"), inputs(FAILED))
    assert plan.spec is None and plan.mode == "NONE"
    plan = make_plan(config(FL_GPU_REQUIRED="YES"), inputs(GpuVerdict("PASSED", UUIDS)))
    assert plan.fallback is None


def test_no_superlink_is_a_failure() -> None:
    plan = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"), superlink=None))
    assert plan.spec is None and plan.problems[0].name == "superlink_not_found"


def test_hardening_mounts_and_labels() -> None:
    plan = make_plan(
        config(FL_TLS_ENABLED="NO", FL_MAX_RETRIES="4", FL_LOG_LEVEL="DEBUG"),
        inputs(GpuVerdict("CPU_ONLY")),
    )
    body = create_body(plan.spec)
    host = body["HostConfig"]
    assert plan.spec.name == "flower-supernode"
    assert host["CapDrop"] == ["ALL"] and host["Privileged"] is False
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    assert host["Binds"] == ["/opt/flower/data:/app/data:ro"]
    assert "User" not in body  # the image names a numeric non-root user
    assert body["Labels"]["fl-agent.spec-hash"] == plan.spec.spec_hash
    assert body["Cmd"][:1] == ["--insecure"]
    assert body["Cmd"][-2:] == ["--max-retries", "4"]
    assert "FLWR_LOG_LEVEL=DEBUG" in body["Env"]


def test_root_image_runs_as_49999() -> None:
    for user in ("", "root", "0:0"):
        plan = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"), image_user=user))
        assert create_body(plan.spec)["User"] == "49999:49999"


def test_tls_with_ca_mounts_it_and_passes_root_certificates() -> None:
    plan = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"), ca_host_path="/etc/fl-agent/ca.pem"))
    command = plan.spec.command
    assert "--insecure" not in command
    assert command[command.index("--root-certificates") + 1] == "/app/tls/ca.pem"
    assert ("/etc/fl-agent/ca.pem", "/app/tls/ca.pem", "ro") in [
        (b.source, b.target, b.mode) for b in plan.spec.binds
    ]


def test_memory_fraction_reaches_the_clientapp_env() -> None:
    plan = make_plan(config(FL_GPU_MEMORY_FRACTION="0.25"), inputs(GpuVerdict("PASSED", UUIDS)))
    assert dict(plan.spec.environment)["FL_GPU_MEMORY_FRACTION"] == "0.25"


@pytest.mark.parametrize(
    "change",
    [
        {"FL_LOG_LEVEL": "DEBUG"},
        {"FL_NODE_CONFIG": "a=1"},
        {"FLOWER_VERSION": "1.25.0"},
        {"FL_ISOLATION": "process"},
    ],
)
def test_hash_changes_with_the_spec_and_only_then(change) -> None:
    base = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"))).spec
    same = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"))).spec
    assert base.spec_hash == same.spec_hash
    changed_inputs = inputs(GpuVerdict("CPU_ONLY"))
    if "FL_NODE_CONFIG" in change:
        changed_inputs = inputs(GpuVerdict("CPU_ONLY"), node_config=change["FL_NODE_CONFIG"])
    other = make_plan(config(**change), changed_inputs).spec
    assert other.spec_hash != base.spec_hash


def test_the_gpu_supernode_gets_shared_memory_sized_to_the_vm_and_nvidias_ulimits() -> None:
    verdict = GpuVerdict("PASSED", UUIDS, request_all=True)
    plan = make_plan(config(), inputs(verdict, memory_bytes=16 * 2**30))
    host = create_body(plan.spec)["HostConfig"]
    assert host["ShmSize"] == 8 * 2**30
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]} == {"memlock": -1, "stack": 67108864}
    assert plan.fallback.resources is None  # the CPU spec keeps its hash


# --- the periodic re-convergence: the last boot's mode, changed only by a confirmed loss

GPU_ALL = Established(Mode.GPU)


def test_a_re_convergence_keeps_the_boots_gpu_spec_whatever_a_probe_would_say() -> None:
    booted = make_plan(config(), inputs(GpuVerdict("PASSED", UUIDS[:1], request_all=False)))
    kept = Established(Mode.GPU, UUIDS[:1], request_all=False)
    again = make_plan(config(), inputs(FAILED, validated=False, periodic=True, established=kept))
    assert again.mode == "GPU" and not again.degraded
    assert again.spec.spec_hash == booted.spec.spec_hash
    assert not again.has(ActionKind.INSTALL_TOOLKIT) and again.resume_from is None


def test_a_confirmed_loss_demotes_as_fl_gpu_required_says() -> None:
    lost = Established(Mode.GPU, lost=UUIDS[:1])
    plan = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"), periodic=True, established=lost))
    assert plan.mode == "CPU" and plan.degraded and plan.state == BootState.DEGRADED
    assert plan.problems[0].name == "gpu_lost_confirmed" and UUIDS[0] in plan.problems[0].subject
    required = make_plan(
        config(FL_GPU_REQUIRED="YES"), inputs(GpuVerdict("CPU_ONLY"), established=lost)
    )
    assert required.spec is None and required.state == BootState.FAILED


def test_a_cpu_node_stays_cpu_and_a_degraded_one_stays_degraded() -> None:
    why = Problem("gpu_start_failed", "flower-supernode", "refused", "x")
    degraded = Established(Mode.CPU, problem=why)
    plan = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"), periodic=True, established=degraded))
    assert plan.mode == "CPU" and plan.degraded and plan.problems == (why,)
    plain = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"), established=Established(Mode.CPU)))
    assert plain.mode == "CPU" and not plain.degraded
    no = config(FL_GPU_ENABLED="NO")
    off = make_plan(no, inputs(GpuVerdict("CPU_ONLY"), established=GPU_ALL))
    assert off.mode == "CPU" and off.reason == "FL_GPU_ENABLED=NO"


def test_the_dev_char_links_are_made_at_boot_when_a_gpu_is_present_only() -> None:
    passed = GpuVerdict("PASSED", UUIDS)
    kinds = [a.kind for a in make_plan(config(), inputs(passed, gpu_present=True)).actions]
    assert kinds[-3:] == [ActionKind.DEV_CHAR_LINKS, ActionKind.CONVERGE, ActionKind.RECORD]
    for periodic in (
        inputs(passed, gpu_present=False),
        inputs(passed, gpu_present=True, periodic=True, established=GPU_ALL),
    ):
        assert not make_plan(config(), periodic).has(ActionKind.DEV_CHAR_LINKS)
