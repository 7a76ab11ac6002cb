"""`fl-agent validate`: JSON and text output, exit codes against what the config asks for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures_gpu import (
    cpu_only_vm,
    gpu_vm,
    h100,
    load_driver,
    nvml_env,
    nvml_stub,  # noqa: F401  (a fixture)
)


def cli(tmp_path, variables: dict[str, str], *args: str, stub=None, scenario=None):
    context = tmp_path / "context.sh"
    context.write_text("".join(f"{k}='{v}'\n" for k, v in variables.items()))
    env = nvml_env(stub, scenario, tmp_path)
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    argv = [sys.executable, "-m", "agent", "--root", str(tmp_path / "root"), "--log-level",
            "ERROR", "validate", "--context-file", str(context), *args]  # fmt: skip
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


BASE = {"FL_SUPERLINK_ADDRESS": "10.0.0.1:9092"}


@pytest.mark.parametrize(
    "gpu,verdict,code",
    [("AUTO", "CPU_ONLY", 0), ("NO", "CPU_ONLY", 0), ("YES", "FAILED", 1)],
)
def test_cpu_only_vm_exit_codes(tmp_path, gpu, verdict, code):
    cpu_only_vm(tmp_path / "root")
    proc = cli(tmp_path, {**BASE, "FL_GPU_ENABLED": gpu}, "--json")
    report = json.loads(proc.stdout)
    assert (report["verdict"], proc.returncode) == (verdict, code)
    assert report["mode"] == "CPU"


def test_gpu_present_but_path_failing_is_exit_1(tmp_path, nvml_stub):  # noqa: F811
    load_driver(gpu_vm(tmp_path / "root", "nvidia"))
    proc = cli(tmp_path, {**BASE, "FL_GPU_ENABLED": "AUTO"}, "--json", stub=nvml_stub,
               scenario=h100())  # fmt: skip
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["verdict"] == "FAILED"
    assert report["failed_stage"] == "toolkit" and report["problem"]["name"] == "toolkit_missing"


def test_invalid_config_is_exit_2(tmp_path):
    cpu_only_vm(tmp_path / "root")
    proc = cli(tmp_path, {**BASE, "FL_GPU_ENABLED": "MAYBE"}, "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["errors"][0]["subject"] == "FL_GPU_ENABLED"


def test_text_table(tmp_path):
    gpu_vm(tmp_path / "root", "vfio-pci")
    proc = cli(tmp_path, {**BASE, "FL_GPU_ENABLED": "YES"})
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == "FL_GPU_ENABLED=YES  mode: CPU"
    assert lines[1].startswith("[FAIL] pci: GPU 0000:01:00.0 is bound to vfio-pci")
    assert lines[2].startswith("       FIX: inside the VM the GPU must be bound")
    assert "[SKIP] container: stage pci failed" in lines
    assert lines[-2:] == ["FAILED", "error class: gpu_bound_to_vfio"]


def test_repair_installs_the_toolkit_and_resumes_from_its_stage(tmp_path, nvml_stub):  # noqa: F811
    from tests.toolkit_repo import bake_packages

    root = load_driver(gpu_vm(tmp_path / "root", "nvidia"))
    bake_packages(root, tmp_path / "debs")
    observed = cli(tmp_path, BASE, "--json", stub=nvml_stub, scenario=h100())
    assert json.loads(observed.stdout)["failed_stage"] == "toolkit"
    assert not (root / "usr/bin/nvidia-ctk").exists()  # without --repair nothing changes
    proc = cli(tmp_path, BASE, "--json", "--repair", stub=nvml_stub, scenario=h100())
    report = json.loads(proc.stdout)
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["toolkit"]["status"] == "ok" and stages["toolkit"]["detail"].startswith(
        "installed: nvidia-ctk at /usr/bin/nvidia-ctk"
    )
    # no engine here: the container stage is the first to fail
    assert (proc.returncode, report["failed_stage"]) == (1, "container")
    markers = sorted(p.name for p in (root / "run/fl-agent/validations").iterdir())
    assert markers == ["driver-ready", "fabric-ready", "nvml-ready", "pci-ready", "toolkit-ready"]
