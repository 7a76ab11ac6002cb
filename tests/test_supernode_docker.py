"""Converging the SuperNode container on the real Docker engine of this machine."""

from __future__ import annotations

import pytest

from agent.command import RunResult
from agent.config import build_config
from agent.engine import GpuRepairs, converge
from agent.plan import GpuVerdict, ImageFacts, PlanInputs, make_plan

pytestmark = pytest.mark.docker


CPU_ONLY = GpuVerdict("CPU_ONLY")


def plan_for(image: str, data_dir, verdict=CPU_ONLY, **variables):
    result = build_config(
        {
            "FL_SUPERLINK_ADDRESS": "127.0.0.1:9092",
            "FL_TLS_ENABLED": "NO",
            "FL_SUPERNODE_IMAGE": image,
            **variables,
        }
    )
    assert result.ok, result.problems
    user = "49999:49999" if image.endswith(":ok") or image.endswith(":crash") else ""
    facts = ImageFacts(image, True, user)
    return make_plan(
        result.config, PlanInputs(verdict, "127.0.0.1:9092", "partition-id=0", str(data_dir), facts)
    )


def no_sleep(_seconds: float) -> None:
    return None


def inspect(client, name="flower-supernode") -> dict:
    return client.api.inspect_container(name)


def test_first_boot_then_unchanged_then_replaced(
    docker_client, engine, standin_images, no_supernode, tmp_path
):
    plan = plan_for(standin_images["ok"], tmp_path)
    first = converge(engine, plan.spec, stability_s=0.5)
    assert first.action == "created" and first.running, first.problems
    data = inspect(docker_client)
    host = data["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Binds"] == [f"{tmp_path}:/app/data:ro"]
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert host["Privileged"] is False
    assert host["Runtime"] == "runc"
    assert not host.get("DeviceRequests")
    assert data["Config"]["Labels"]["fl-agent.spec-hash"] == plan.spec.spec_hash
    assert "NVIDIA_VISIBLE_DEVICES=void" in data["Config"]["Env"]
    assert data["Config"]["Cmd"] == list(plan.spec.command)

    second = converge(engine, plan.spec, stability_s=0.5)
    assert second.action == "unchanged" and second.container_id == first.container_id

    changed = plan_for(standin_images["ok"], tmp_path, FL_LOG_LEVEL="DEBUG")
    third = converge(engine, changed.spec, stability_s=0.5)
    assert third.action == "replaced" and third.container_id != first.container_id
    assert "FLWR_LOG_LEVEL=DEBUG" in inspect(docker_client)["Config"]["Env"]


def test_stopped_container_is_started(
    docker_client, engine, standin_images, no_supernode, tmp_path
):
    plan = plan_for(standin_images["ok"], tmp_path)
    first = converge(engine, plan.spec, stability_s=0.2)
    docker_client.containers.get("flower-supernode").stop(timeout=1)
    again = converge(engine, plan.spec, stability_s=0.2)
    assert again.action == "started" and again.container_id == first.container_id
    assert inspect(docker_client)["State"]["Running"]


def test_unasked_exit_is_brought_back_by_the_engine(
    docker_client, engine, standin_images, no_supernode, tmp_path
):
    """The SuperNode exits 0 when its SuperLink restarts: the policy must restart it."""
    import time

    plan = plan_for(standin_images["ok"], tmp_path)
    converge(engine, plan.spec, stability_s=0.2)
    container = docker_client.containers.get("flower-supernode")
    container.exec_run(["/bin/sh", "-c", "kill -TERM 1"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        container.reload()
        if container.attrs["RestartCount"] >= 1 and container.status == "running":
            break
        time.sleep(0.3)
    assert container.attrs["RestartCount"] >= 1 and container.status == "running"
    assert container.attrs["State"]["ExitCode"] == 0


def test_gpu_refusal_falls_back_to_cpu_and_leaves_nothing(
    docker_client, engine, standin_images, no_supernode, tmp_path
):
    gpu = GpuVerdict("PASSED", ("GPU-11111111-1111-1111-1111-111111111111",))
    plan = plan_for(standin_images["ok"], tmp_path, verdict=gpu)
    assert plan.mode == "GPU" and plan.fallback is not None
    result = converge(engine, plan.spec, fallback=plan.fallback, stability_s=0.3)
    assert result.running and result.spec.mode == "CPU"
    assert "could not select device driver" in result.gpu_start_error
    names = [c.name for c in docker_client.containers.list(all=True)]
    assert names.count("flower-supernode") == 1
    assert not inspect(docker_client)["HostConfig"].get("DeviceRequests")


def test_gpu_required_refusal_leaves_no_container(
    docker_client, engine, standin_images, no_supernode, tmp_path
):
    from docker.errors import NotFound

    gpu = GpuVerdict("PASSED", ())
    plan = plan_for(standin_images["ok"], tmp_path, verdict=gpu, FL_GPU_REQUIRED="YES")
    result = converge(engine, plan.spec, fallback=plan.fallback, stability_s=0.3)
    assert not result.running and result.problems[0].name == "gpu_runtime_unavailable"
    with pytest.raises(NotFound):
        docker_client.containers.get("flower-supernode")


class Recording:
    """The repairs' command runner: records, never restarts this machine's shared engine."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv, *, timeout):
        self.calls.append(list(argv))
        return RunResult(0, "")


@pytest.mark.parametrize("at_boot,restarts", [(True, 1), (False, 0)])
def test_could_not_select_device_driver_restarts_the_engine_once_at_boot_only(
    engine, standin_images, no_supernode, tmp_path, at_boot, restarts
):
    """This engine refuses --gpus as one started before the toolkit does (ENVIRONMENT.md)."""
    gpu = GpuVerdict("PASSED", ("GPU-11111111-1111-1111-1111-111111111111",))
    plan = plan_for(standin_images["ok"], tmp_path, verdict=gpu)
    runner = Recording()
    repairs = GpuRepairs(at_boot=at_boot, runner=runner)
    result = converge(engine, plan.spec, fallback=plan.fallback, stability_s=0.3, repairs=repairs)
    assert runner.calls == [["systemctl", "restart", "docker"]] * restarts
    assert result.running and result.spec.mode == "CPU"  # refused again: the fallback


def test_refused_ulimits_start_without_them_and_stay_unchanged(
    docker_client, engine, standin_images, no_supernode, tmp_path
):
    """This engine may not raise memlock ("error setting rlimit type 8"): the container starts
    without the ulimits, keeps its shared memory, and is labelled with the planned spec's hash,
    so converging again (the next boot) leaves it as it is."""
    from dataclasses import replace

    from agent.container_resources import container_resources
    from agent.plan import LABEL_HASH

    plan = plan_for(standin_images["ok"], tmp_path)
    spec = replace(plan.spec, resources=container_resources(8 * 2**30))
    first = converge(engine, spec, stability_s=0.3)
    assert first.running and str(first.action) == "created"
    attrs = inspect(docker_client)
    assert attrs["HostConfig"]["ShmSize"] == 4 * 2**30 and not attrs["HostConfig"]["Ulimits"]
    assert attrs["Config"]["Labels"][LABEL_HASH] == spec.spec_hash
    second = converge(engine, spec, stability_s=0.3)
    assert str(second.action) == "unchanged" and second.container_id == first.container_id


def test_image_exiting_at_once_is_a_crash_loop(
    docker_client, engine, standin_images, no_supernode, tmp_path
):
    plan = plan_for(standin_images["crash"], tmp_path)
    result = converge(engine, plan.spec, stability_s=2.0)
    assert not result.running
    assert result.problems[0].name == "supernode_crash_loop"
    assert any("exiting with 3" in line for line in result.log_tail)


def test_image_without_user_runs_as_49999(
    docker_client, engine, standin_images, no_supernode, tmp_path
):
    plan = plan_for(standin_images["root"], tmp_path)
    assert plan.spec.user == "49999:49999"
    result = converge(engine, plan.spec, stability_s=0.5)
    assert result.running
    logs = docker_client.containers.get("flower-supernode").logs().decode()
    assert "standin-user: 49999:49999" in logs
    assert "standin-home: writable" in logs


def test_image_user_home_and_data_usable(
    docker_client, engine, standin_images, no_supernode, tmp_path
):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    data.chmod(0o755)
    plan = plan_for(standin_images["ok"], data)
    assert plan.spec.user is None  # the image's own user 49999
    assert converge(engine, plan.spec, stability_s=0.5).running
    logs = docker_client.containers.get("flower-supernode").logs().decode()
    assert "standin-user: 49999:49999" in logs and "standin-data: readable" in logs
    assert "standin-home: writable" in logs
