"""GPU test fixtures: sysfs//proc trees built in tmp dirs, NVML scenarios for the C stand-in.

The stand-in libnvidia-ml.so.1 (tests/nvml_stub/nvml_stub.c) is compiled once per session with
gcc. pynvml caches the library it loaded for the life of a process, so everything that touches
NVML runs in a child Python process with LD_LIBRARY_PATH pointing at the stand-in (or, for "no
library", at an empty directory) and NVML_STUB_SCENARIO naming the scenario file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STUB_SOURCE = REPO / "tests" / "nvml_stub" / "nvml_stub.c"

H100_UUID = "GPU-5d3b1c2a-1111-4a2b-9c3d-0123456789ab"
A100_UUIDS = tuple(f"GPU-a1000000-0000-4000-8000-00000000000{i}" for i in (1, 2))
MIG_UUIDS = tuple(f"MIG-0b1c2d3e-0000-5000-9000-00000000000{c}" for c in "ab")
DRIVER = "550.54.15"
GIB = 2**30

PROPRIETARY_VERSION_LINE = (
    f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {DRIVER}  Tue Mar  5 22:15:33 UTC 2024"
)
OPEN_VERSION_LINE = (
    f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}  Release Build  "
    "(dvs-builder@U16-I3-B03-4-3)  Tue Mar  5 22:19:39 UTC 2024"
)


# Driver branch -> the nvidia-ml-py release of that branch (the bindings users pair with it).
BRANCH_BINDINGS = {535: "12.535.161", 550: "12.550.52", 570: "12.570.86"}


def build_stub(out_dir: Path, branch: int = 550) -> Path:
    """Compile the stand-in of a driver branch into out_dir/libnvidia-ml.so.1; return the dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / "libnvidia-ml.so.1"
    argv = ["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-Werror", f"-DNVML_BRANCH={branch}"]
    subprocess.run([*argv, "-o", str(library), str(STUB_SOURCE)], check=True)
    return out_dir


@pytest.fixture(scope="session")
def nvml_stub(tmp_path_factory) -> Path:
    """The compiled stand-in's directory (for LD_LIBRARY_PATH): an R550 driver."""
    return build_stub(tmp_path_factory.mktemp("nvml-stub"))


@pytest.fixture(scope="session")
def nvml_stubs(tmp_path_factory) -> dict[int, Path]:
    """One stand-in per driver branch of the matrix (R535, R550, R570)."""
    return {b: build_stub(tmp_path_factory.mktemp(f"nvml-r{b}"), b) for b in BRANCH_BINDINGS}


@pytest.fixture(scope="session")
def nvml_bindings(tmp_path_factory) -> dict[int, Path]:
    """Each branch's nvidia-ml-py, installed from PyPI into a directory of its own."""
    found = {}
    for branch, version in BRANCH_BINDINGS.items():
        target = tmp_path_factory.mktemp(f"nvidia-ml-py-{branch}")
        argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target"]
        subprocess.run([*argv, str(target), f"nvidia-ml-py=={version}"], check=True, timeout=300)
        found[branch] = target
    return found


# --- NVML scenarios ---


def h100(**extra) -> dict:
    device = {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": H100_UUID,
        "pci_bus_id": "00000000:01:00.0",
        "pci_device_id": 0x233010DE,
        "memory_total": 80 * GIB,
        "cc": [9, 0],
        "mig": [0, 0],
        **extra,
    }
    return {"driver_version": DRIVER, "cuda_driver_version": 12040, "devices": [device]}


A100_MIG_PROFILES = ("2g.20gb", "1c.2g.20gb")
"""two_a100_mig's MIG devices' profiles: two-slice GPU instances of 19968 MiB on an 80 GiB
A100, the second's compute instance one slice."""


def two_a100_mig() -> dict:
    """Two A100s with MIG on; the first holds two MIG devices, the second none."""
    devices = []
    for i, uuid in enumerate(A100_UUIDS):
        migs = []
        if i == 0:
            attributes = {"gi_slices": 2, "memory_mb": 19968}
            migs = [
                {"slot": 0, "uuid": MIG_UUIDS[0], "gi": 1, "ci": 0, "memory_total": 20 * GIB}
                | attributes
                | {"ci_slices": 2},
                {"slot": 3, "uuid": MIG_UUIDS[1], "gi": 2, "ci": 0, "memory_total": 20 * GIB}
                | attributes
                | {"ci_slices": 1},
            ]
        devices.append(
            {
                "name": "NVIDIA A100-SXM4-80GB",
                "uuid": uuid,
                "pci_bus_id": f"00000000:0{i + 1}:00.0",
                "pci_device_id": 0x20B210DE,
                "memory_total": 80 * GIB,
                "cc": [8, 0],
                "mig": [1, 1],
                "max_mig": 7,
                "mig_devices": migs,
            }
        )
    return {"driver_version": DRIVER, "cuda_driver_version": 12040, "devices": devices}


def failing_init(code: int) -> dict:
    """nvmlInit fails: 9 driver not loaded, 18 library/kernel mismatch, ..."""
    return {"init": code}


# --- sysfs, /proc, /dev trees ---


def add_pci_function(
    root: Path,
    address: str,
    *,
    vendor: str = "0x10de",
    device: str = "0x2330",
    klass: str = "0x030200",
    driver: str | None = None,
    numa: int = -1,
    bars: tuple[int, ...] = (16 * 2**20, 128 * GIB, 0, 32 * 2**20),
    virtual_function: bool = False,
) -> Path:
    """One PCI function as sysfs shows it (the driver and physfn as symlinks)."""
    entry = root / "sys/bus/pci/devices" / address
    entry.mkdir(parents=True)
    (entry / "vendor").write_text(vendor + "\n")
    (entry / "device").write_text(device + "\n")
    (entry / "class").write_text(klass + "\n")
    (entry / "numa_node").write_text(f"{numa}\n")
    lines, base = [], 0xF000000000
    for size in bars:
        end, flags = (base + size - 1, 0x140204) if size else (0, 0)
        lines.append(f"0x{base if size else 0:016x} 0x{end:016x} 0x{flags:016x}")
        base += max(size, 2**20)
    (entry / "resource").write_text("\n".join(lines) + "\n")
    if driver:
        target = root / "sys/bus/pci/drivers" / driver
        target.mkdir(parents=True, exist_ok=True)
        (entry / "driver").symlink_to(target)
    if virtual_function:
        (entry / "physfn").symlink_to(entry)
    return entry


def cpu_only_vm(root: Path) -> Path:
    """A VM without a GPU: a virtio NIC and a VGA from QEMU, nothing from NVIDIA."""
    add_pci_function(root, "0000:00:01.0", vendor="0x1234", device="0x1111", klass="0x030000")
    add_pci_function(root, "0000:00:02.0", vendor="0x1af4", device="0x1041", klass="0x020000")
    (root / "sys/firmware/efi").mkdir(parents=True)
    return root


def gpu_vm(root: Path, driver: str | None, *, uefi: bool = True) -> Path:
    """A VM with one H100 passed through and bound to `driver` (None: unbound)."""
    add_pci_function(root, "0000:01:00.0", driver=driver, numa=0)
    if uefi:
        (root / "sys/firmware/efi").mkdir(parents=True)
    return root


def load_driver(
    root: Path, version: str = DRIVER, *, line: str | None = None, nodes: int = 1
) -> Path:
    """The nvidia module loaded: /proc/driver/nvidia/version, /sys/module/nvidia, /dev nodes."""
    proc = root / "proc/driver/nvidia"
    proc.mkdir(parents=True)
    text = line or PROPRIETARY_VERSION_LINE.replace(DRIVER, version)
    (proc / "version").write_text(text + "\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    module = root / "sys/module/nvidia"
    module.mkdir(parents=True)
    (module / "version").write_text(version + "\n")
    (module / "refcnt").write_text("4\n")
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    for name in ["nvidiactl", "nvidia-uvm", *(f"nvidia{i}" for i in range(nodes))]:
        (dev / name).write_text("")
    return root


def kernel_log(root: Path, *lines: str) -> Path:
    log = root / "var/log/kern.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    noise = "Nov 28 10:00:00 vm kernel: [    0.000000] Linux version 6.1.0-27-amd64\n"
    log.write_text(noise + "".join(f"Nov 28 10:00:05 vm kernel: {line}\n" for line in lines))
    return root


def install_toolkit(root: Path) -> Path:
    """The toolkit's files as detect() looks for them: binaries on dockerd's PATH, daemon.json."""
    bin_dir = root / "usr/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("nvidia-ctk", "nvidia-container-runtime-hook", "nvidia-container-runtime"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    daemon = root / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True, exist_ok=True)
    daemon.write_text(
        json.dumps({"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}})
    )
    return root


# --- running the agent against a tree and a scenario ---


def nvml_env(
    stub_dir: Path | None, scenario: dict | None, tmp: Path, bindings: Path | None = None
) -> dict[str, str]:
    """Environment for a child process: the stand-in and its scenario, or no library at all;
    `bindings`: a directory holding another nvidia-ml-py than the venv's."""
    env = dict(os.environ)
    empty = tmp / "no-nvml"
    empty.mkdir(exist_ok=True)
    env["LD_LIBRARY_PATH"] = str(stub_dir if scenario is not None and stub_dir else empty)
    if scenario is not None:
        path = tmp / "scenario.json"
        path.write_text(json.dumps(scenario))
        env["NVML_STUB_SCENARIO"] = str(path)
    env["PYTHONPATH"] = os.pathsep.join([*([str(bindings)] if bindings else []), str(REPO)])
    return env


_VALIDATE = """
import json, sys
from agent.config import build_config
from agent.paths import Root
from agent.validation import run_stages, validate
args = json.loads(sys.argv[1])
config = build_config(args["variables"]).config
root, kwargs = Root.from_env(args["root"]), args["kwargs"]
if "names" in kwargs:
    result = run_stages(config, root, tuple(kwargs.pop("names")), **kwargs)
    print(json.dumps({"stages": [s.to_dict() for s in result.stages]}))
else:
    report = validate(config, root, **{"repair": False, **kwargs})
    print(json.dumps({**report.to_dict(), "as_requested": report.as_requested}))
"""

_FACTS = """
import json, sys
from agent.gpu import collect_facts
from agent.paths import Root
print(json.dumps(collect_facts(Root.from_env(sys.argv[1])).to_dict()))
"""


def run_python(code: str, argv: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def collect(
    root: Path,
    stub_dir: Path | None,
    scenario: dict | None,
    tmp: Path,
    bindings: Path | None = None,
) -> dict:
    """collect_facts(Root(root)) in a child process, as JSON."""
    return run_python(_FACTS, [str(root)], nvml_env(stub_dir, scenario, tmp, bindings))


def validate_in_child(
    root: Path,
    variables: dict[str, str],
    stub_dir: Path | None,
    scenario: dict | None,
    tmp: Path,
    *,
    env: dict[str, str] | None = None,
    **kwargs,
) -> dict:
    """validate() in a child process; the report as JSON (plus `as_requested`).

    With `names=[...]`, run_stages() instead: only the stage results.
    """
    variables = {"FL_SUPERLINK_ADDRESS": "10.0.0.1:9092", **variables}
    payload = json.dumps({"root": str(root), "variables": variables, "kwargs": kwargs})
    child_env = {**nvml_env(stub_dir, scenario, tmp), **(env or {})}
    return run_python(_VALIDATE, [payload], child_env)


def stages(report: dict) -> dict[str, dict]:
    return {s["name"]: s for s in report["stages"]}


def statuses(report: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in report["stages"]}
