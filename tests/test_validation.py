"""Staged validation over fixture trees and NVML scenarios: verdicts stage by stage, with hints.

NVML runs in a child process per case (the stand-in is found through LD_LIBRARY_PATH). The
engine is kept out of these cases (DOCKER_HOST points nowhere) unless a test needs it; the
container stage against the real engine is in test_validation_docker.py.
"""

from __future__ import annotations

import json

from agent.nodefacts import from_validation, node_config_facts
from tests.fixtures_gpu import (
    A100_MIG_PROFILES,
    A100_UUIDS,
    DRIVER,
    H100_UUID,
    MIG_UUIDS,
    cpu_only_vm,
    failing_init,
    gpu_vm,
    h100,
    install_toolkit,
    kernel_log,
    load_driver,
    nvml_stub,  # noqa: F401  (a fixture)
    stages,
    statuses,
    two_a100_mig,
    validate_in_child,
)

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
LATER = ("driver", "nvml", "fabric", "toolkit", "container", "framework")


def run(tmp_path, stub, scenario, gpu="AUTO", **kwargs):
    variables = {"FL_GPU_ENABLED": gpu, **kwargs.pop("variables", {})}
    return validate_in_child(
        tmp_path / "root", variables, stub, scenario, tmp_path, env=NO_ENGINE, **kwargs
    )


def working(tmp_path, version=DRIVER, **kw):
    return load_driver(gpu_vm(tmp_path / "root", "nvidia", **kw), version)


# --- no GPU ---


def test_cpu_only_vm_auto_is_cpu_only(tmp_path):
    cpu_only_vm(tmp_path / "root")
    report = run(tmp_path, None, None)
    assert (report["verdict"], report["mode"], report["as_requested"]) == ("CPU_ONLY", "CPU", True)
    pci = stages(report)["pci"]
    assert pci["status"] == "ok" and "no NVIDIA GPU" in pci["detail"]
    assert all(stages(report)[s]["status"] == "skip" for s in LATER)
    assert report["problem"] is None


def test_cpu_only_vm_yes_is_a_failure(tmp_path):
    cpu_only_vm(tmp_path / "root")
    report = run(tmp_path, None, None, gpu="YES")
    assert (report["verdict"], report["mode"], report["as_requested"]) == ("FAILED", "CPU", False)
    assert report["failed_stage"] == "pci" and report["problem"]["name"] == "gpu_not_found"
    assert "PCI=[" in stages(report)["pci"]["hint"]
    assert all(stages(report)[s]["detail"] == "stage pci failed" for s in LATER)


def test_gpu_disabled_skips_everything(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path)
    report = run(tmp_path, nvml_stub, h100(), gpu="NO")
    assert report["verdict"] == "CPU_ONLY" and report["as_requested"]
    assert set(statuses(report).values()) == {"skip"}
    assert report["facts"]["nvml"]["gpus"][0]["uuid"] == H100_UUID  # still inventoried


# --- passthrough problems seen inside the guest ---


def test_gpu_still_bound_to_vfio_in_the_guest(tmp_path):
    gpu_vm(tmp_path / "root", "vfio-pci")
    report = run(tmp_path, None, None)
    pci = stages(report)["pci"]
    assert report["verdict"] == "FAILED" and pci["status"] == "fail"
    assert report["problem"]["name"] == "gpu_bound_to_vfio"
    assert "driverctl unset-override 0000:01:00.0" in pci["hint"]
    assert "NUMA 0" in pci["detail"] and "BAR1 128 GiB" in pci["detail"]


def test_nouveau_bound(tmp_path):
    gpu_vm(tmp_path / "root", "nouveau")
    report = run(tmp_path, None, None, gpu="YES")
    assert report["problem"]["name"] == "gpu_nouveau_bound"
    assert "blacklist nouveau" in stages(report)["pci"]["hint"]


def test_no_driver_installed(tmp_path):
    gpu_vm(tmp_path / "root", None)
    report = run(tmp_path, None, None)
    assert statuses(report)["pci"] == "ok"
    assert report["failed_stage"] == "driver"
    assert report["problem"]["name"] == "nvml_library_not_found"
    assert "install the NVIDIA driver" in stages(report)["driver"]["hint"]


def test_driver_installed_but_module_not_loaded(tmp_path, nvml_stub):  # noqa: F811
    gpu_vm(tmp_path / "root", None)
    kernel_log(tmp_path / "root", "Loading of module with unavailable key is rejected",
               "nvidia: module verification failed: Key was rejected by service")  # fmt: skip
    report = run(tmp_path, nvml_stub, failing_init(9))
    driver = stages(report)["driver"]
    assert report["problem"]["name"] == "gpu_driver_not_loaded"
    assert "Key was rejected by service" in driver["detail"] and "Secure Boot" in driver["hint"]


def test_driver_init_failed_on_a_bios_vm(tmp_path, nvml_stub):  # noqa: F811
    root = load_driver(gpu_vm(tmp_path / "root", None, uefi=False))
    kernel_log(root, "NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x22:0x56:742)")
    report = run(tmp_path, nvml_stub, {"devices": []})
    driver = stages(report)["driver"]
    assert report["problem"]["name"] == "gpu_driver_init_failed"
    assert "RmInitAdapter failed" in driver["detail"]
    assert "BIOS" in driver["hint"] and "OS=[FIRMWARE=UEFI, MACHINE=q35]" in driver["hint"]


# --- driver versions ---


def test_library_kernel_mismatch_from_nvml(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path)
    report = run(tmp_path, nvml_stub, failing_init(18))
    assert report["failed_stage"] == "driver"
    assert report["problem"]["name"] == "gpu_driver_mismatch"
    assert "reboot" in stages(report)["driver"]["hint"]


def test_module_version_differs_from_nvml(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path, version="535.183.01")
    report = run(tmp_path, nvml_stub, h100())
    assert report["problem"]["name"] == "gpu_driver_mismatch"
    assert "535.183.01" in report["problem"]["message"] and DRIVER in report["problem"]["message"]


# --- a working driver ---


def test_working_driver_stops_at_the_missing_toolkit(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path)
    report = run(tmp_path, nvml_stub, h100(), gpu="YES")
    assert statuses(report) == {
        "pci": "ok",
        "driver": "ok",
        "nvml": "ok",
        "fabric": "skip",
        "toolkit": "fail",
        "container": "skip",
        "framework": "skip",
    }
    nvml = stages(report)["nvml"]
    assert H100_UUID in nvml["detail"] and "CUDA 12.4" in nvml["detail"]
    assert report["problem"]["name"] == "toolkit_missing"
    assert "FL_TOOLKIT_INSTALL=AUTO" in stages(report)["toolkit"]["hint"]
    assert report["verdict"] == "FAILED" and report["mode"] == "CPU"
    assert all(s["duration_ms"] >= 0 for s in report["stages"])


def test_toolkit_present_then_no_engine(tmp_path, nvml_stub):  # noqa: F811
    install_toolkit(working(tmp_path))
    report = run(tmp_path, nvml_stub, h100())
    toolkit = stages(report)["toolkit"]
    assert toolkit["status"] == "ok" and "mode legacy" in toolkit["detail"]
    assert report["failed_stage"] == "container"
    assert report["problem"]["name"] == "docker_unavailable"


def test_toolkit_in_a_mode_the_hook_refuses_fails(tmp_path, nvml_stub):  # noqa: F811
    root = install_toolkit(working(tmp_path))
    config = root / "etc/nvidia-container-runtime/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[nvidia-container-runtime]\nmode = "cdi"\n')
    report = run(tmp_path, nvml_stub, h100())
    toolkit = stages(report)["toolkit"]
    assert toolkit["status"] == "fail" and report["problem"]["name"] == "toolkit_cdi_mode"
    assert 'mode = "legacy"' in toolkit["hint"]


def test_repair_respects_toolkit_install_never(tmp_path, nvml_stub):  # noqa: F811
    root = working(tmp_path)
    variables = {"FL_TOOLKIT_INSTALL": "NEVER"}
    report = run(tmp_path, nvml_stub, h100(), variables=variables, repair=True)
    assert report["failed_stage"] == "toolkit"
    assert report["toolkit"]["action"] == "skipped"
    assert report["problem"]["name"] == "toolkit_missing"
    assert not (root / "etc").exists() and not (root / "usr").exists()


def test_zero_gpus_visible_is_a_failure(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path)
    report = run(tmp_path, nvml_stub, {"devices": []})
    assert report["failed_stage"] in ("driver", "nvml")
    assert report["verdict"] == "FAILED"


def test_lost_gpu(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path)
    report = run(tmp_path, nvml_stub, h100(error=15))
    assert report["failed_stage"] == "nvml" and report["problem"]["name"] == "gpu_lost"


# --- selection and MIG ---


def test_mig_device_selected(tmp_path, nvml_stub):  # noqa: F811
    root = working(tmp_path)
    gpu_vm_second(root)
    variables = {"FL_CUDA_VISIBLE_DEVICES": MIG_UUIDS[1]}
    report = run(tmp_path, nvml_stub, two_a100_mig(), variables=variables)
    assert statuses(report)["nvml"] == "ok", stages(report)["nvml"]
    assert f"selected: {MIG_UUIDS[1]}" in stages(report)["nvml"]["detail"]
    # the report's dict form (the state file keeps it) carries the profile to the node config;
    # without an engine the toolkit stage fails, so the selection is the one the nvml stage made
    facts = from_validation({"facts": report["facts"], "selected": [MIG_UUIDS[1]]})
    assert (facts.count, facts.mig, facts.mig_profile) == (1, True, A100_MIG_PROFILES[1])
    assert node_config_facts(facts, True)["fl-mig-profile"] == f'"{A100_MIG_PROFILES[1]}"'


def test_selection_out_of_range_names_the_entry(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path)
    report = run(tmp_path, nvml_stub, h100(), variables={"FL_CUDA_VISIBLE_DEVICES": "0,3"})
    assert report["failed_stage"] == "nvml"
    assert report["problem"]["name"] == "gpu_selection_invalid"
    assert "entry '3'" in report["problem"]["message"]


def test_mig_on_without_instances(tmp_path, nvml_stub):  # noqa: F811
    root = working(tmp_path)
    gpu_vm_second(root)
    variables = {"FL_CUDA_VISIBLE_DEVICES": A100_UUIDS[1]}
    report = run(tmp_path, nvml_stub, two_a100_mig(), variables=variables)
    assert report["problem"]["name"] == "gpu_selection_invalid"
    assert "no MIG devices" in report["problem"]["message"]


def test_several_mig_devices_for_one_supernode_warn(tmp_path, nvml_stub):  # noqa: F811
    root = working(tmp_path)
    gpu_vm_second(root)
    variables = {"FL_CUDA_VISIBLE_DEVICES": ",".join(MIG_UUIDS[:2])}
    report = run(tmp_path, nvml_stub, two_a100_mig(), variables=variables)
    nvml = stages(report)["nvml"]
    assert nvml["status"] == "warn" and "a CUDA process sees only one MIG device" in nvml["detail"]
    assert "CUDA_VISIBLE_DEVICES=MIG-<uuid>" in nvml["hint"]


def _mig_without_instances() -> dict:
    scenario = two_a100_mig()
    scenario["devices"] = scenario["devices"][1:]
    return scenario


def test_mig_instances_are_waited_for_when_a_mig_tool_recreates_them(tmp_path, nvml_stub):  # noqa: F811
    root = working(tmp_path)
    tool = root / "usr/bin/nvidia-mig-parted"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    report = run(tmp_path, nvml_stub, _mig_without_instances(), mig_wait_s=1)
    assert report["problem"]["name"] == "mig_no_instances"
    assert "waited 1s for /usr/bin/nvidia-mig-parted" in report["problem"]["message"]


def test_no_mig_wait_without_a_mig_tool(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path)
    report = run(tmp_path, nvml_stub, _mig_without_instances(), mig_wait_s=1)
    assert report["problem"]["name"] == "mig_no_instances"
    assert "waited" not in report["problem"]["message"]


def test_rm_init_failure_is_named_by_the_nvml_stage(tmp_path, nvml_stub):  # noqa: F811
    root = working(tmp_path)
    line = "NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x26:0x56:1474)"
    kernel_log(root, line)
    report = run(tmp_path, nvml_stub, h100(handle_error=999))
    assert report["failed_stage"] == "nvml"
    assert report["problem"]["name"] == "gpu_driver_init_failed"
    assert line in report["problem"]["message"]


def gpu_vm_second(root):
    from tests.fixtures_gpu import add_pci_function

    add_pci_function(root, "0000:02:00.0", device="0x20b2", driver="nvidia")


# --- fabric ---


def test_fabric_completes_while_waiting(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path)
    scenario = h100(fabric={"state": 2, "status": 0, "completed_after": 2})
    report = run(tmp_path, nvml_stub, scenario, fabric_wait_s=10)
    fabric = stages(report)["fabric"]
    assert fabric["status"] == "ok" and "completed" in fabric["detail"]


def test_fabric_never_ready(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path)
    report = run(tmp_path, nvml_stub, h100(fabric={"state": 1, "status": 0}), fabric_wait_s=1)
    assert report["failed_stage"] == "fabric"
    assert report["problem"]["name"] == "fabric_not_ready"
    assert "802" in report["problem"]["message"]
    assert "nvidia-fabricmanager" in stages(report)["fabric"]["hint"]


def test_fabric_registration_failed(tmp_path, nvml_stub):  # noqa: F811
    working(tmp_path)
    report = run(tmp_path, nvml_stub, h100(fabric={"state": 3, "status": 999}), fabric_wait_s=0)
    assert report["failed_stage"] == "fabric"


def test_fabric_failed_at_once_says_so_and_names_the_version_rule(tmp_path, nvml_stub):  # noqa: F811
    """A registration already completed with an error is not reported "after 60s"."""
    working(tmp_path)
    report = run(tmp_path, nvml_stub, h100(fabric={"state": 3, "status": 999}), fabric_wait_s=60)
    message, hint = report["problem"]["message"], stages(report)["fabric"]["hint"]
    assert "status 999" in message and "60s" not in message and "after 0.0s" in message
    assert "exactly the driver's version" in hint and DRIVER in hint


# --- markers and the report ---


def test_markers_and_report(tmp_path, nvml_stub):  # noqa: F811
    root = working(tmp_path)
    markers = root / "run/fl-agent/validations"
    markers.mkdir(parents=True)
    (markers / "toolkit-ready").write_text("stale")
    (markers / "container-ready").write_text("stale")
    report = run(tmp_path, nvml_stub, h100())
    present = sorted(p.name for p in markers.iterdir())
    assert present == ["driver-ready", "fabric-ready", "nvml-ready", "pci-ready"]
    assert json.loads((markers / "driver-ready").read_text())["status"] == "ok"
    saved = json.loads((root / "run/fl-agent/validation.json").read_text())
    assert saved["verdict"] == report["verdict"] == "FAILED"
    assert [s["name"] for s in saved["stages"]] == [s["name"] for s in report["stages"]]


def test_report_shape(tmp_path):
    cpu_only_vm(tmp_path / "root")
    report = run(tmp_path, None, None)
    assert {"verdict", "mode", "stages"} <= set(report)
    for stage in report["stages"]:
        assert set(stage) == {"name", "status", "detail", "hint", "duration_ms"}
        assert stage["status"] in ("ok", "warn", "fail", "skip")


def test_run_stages_runs_only_the_named_ones(tmp_path, nvml_stub):  # noqa: F811
    root = working(tmp_path)
    report = run(tmp_path, nvml_stub, h100(), names=["pci", "driver", "nvml"])
    assert [s for s, v in statuses(report).items() if v != "skip"] == ["pci", "driver", "nvml"]
    assert all(stages(report)[s]["detail"] == "not requested" for s in LATER[2:])
    assert not (root / "run/fl-agent").exists()  # no markers, no report
