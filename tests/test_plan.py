"""The plan is a pure function: every decision checked without a machine."""

from __future__ import annotations

import pytest

from agent.config import build_config
from agent.errors import Problem
from agent.plan import GpuVerdict, PlanInputs, make_plan
from agent.supernode import create_kwargs

UUIDS = ("GPU-11111111-1111-1111-1111-111111111111", "GPU-22222222-2222-2222-2222-222222222222")


def config(**variables: str):
    result = build_config({"FL_SUPERLINK_ADDRESS": "10.0.0.1:9092", **variables})
    assert result.ok, result.problems
    return result.config


def inputs(verdict: GpuVerdict, **kwargs) -> PlanInputs:
    base = {
        "superlink": "10.0.0.1:9092",
        "node_config": "partition-id=0 num-partitions=2",
        "data_dir_host": "/opt/flower/data",
        "image_user": "49999:49999",
    }
    base.update(kwargs)
    return PlanInputs(gpu=verdict, **base)


FAILED = GpuVerdict("FAILED", problem=Problem("toolkit_missing", "toolkit", "no toolkit", "x"))


def test_gpu_all_uses_count_minus_one_and_capabilities() -> None:
    plan = make_plan(config(), inputs(GpuVerdict("PASSED", UUIDS, request_all=True)))
    assert plan.mode == "GPU" and not plan.degraded
    spec = plan.spec
    assert spec.gpu_count == -1 and spec.gpu_device_ids == ()
    env = dict(spec.environment)
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(UUIDS)
    assert spec.runtime is None
    request = create_kwargs(spec)["device_requests"][0]
    assert request["Count"] == -1 and request["DeviceIDs"] == []
    assert request["Capabilities"] == [["gpu"]]
    assert plan.fallback is not None and plan.fallback.mode == "CPU"


def test_gpu_list_uses_device_ids_never_count() -> None:
    plan = make_plan(config(), inputs(GpuVerdict("PASSED", UUIDS[:1], request_all=False)))
    request = create_kwargs(plan.spec)["device_requests"][0]
    assert request["DeviceIDs"] == [UUIDS[0]] and request["Count"] == 0


def test_cpu_mode_is_cpu_for_certain() -> None:
    plan = make_plan(config(FL_GPU_ENABLED="NO"), inputs(GpuVerdict("CPU_ONLY")))
    assert plan.mode == "CPU" and plan.reason == "FL_GPU_ENABLED=NO"
    kwargs = create_kwargs(plan.spec)
    assert kwargs["runtime"] == "runc"
    assert "device_requests" not in kwargs
    assert kwargs["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_failed_gpu_falls_back_to_cpu_degraded() -> None:
    plan = make_plan(config(), inputs(FAILED))
    assert plan.mode == "CPU" and plan.degraded
    assert plan.problems[0].name == "toolkit_missing"


def test_failed_gpu_required_plans_nothing() -> None:
    plan = make_plan(config(FL_GPU_REQUIRED="YES"), inputs(FAILED))
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
    kwargs = create_kwargs(plan.spec)
    assert kwargs["name"] == "flower-supernode"
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["privileged"] is False
    assert kwargs["security_opt"] == ["no-new-privileges:true"]
    assert kwargs["restart_policy"] == {"Name": "unless-stopped"}
    assert kwargs["volumes"] == {"/opt/flower/data": {"bind": "/app/data", "mode": "ro"}}
    assert "user" not in kwargs  # the image names a numeric non-root user
    assert kwargs["labels"]["fl-agent.spec-hash"] == plan.spec.spec_hash
    assert kwargs["command"][:1] == ["--insecure"]
    assert kwargs["command"][-2:] == ["--max-retries", "4"]
    assert kwargs["environment"]["FLWR_LOG_LEVEL"] == "DEBUG"


def test_root_image_runs_as_49999() -> None:
    for user in ("", "root", "0:0"):
        plan = make_plan(config(), inputs(GpuVerdict("CPU_ONLY"), image_user=user))
        assert create_kwargs(plan.spec)["user"] == "49999:49999"


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
