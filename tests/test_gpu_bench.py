"""bench/gpu_check.py on a simulated GPU: stages, timings, and the nvidia-smi cross-check."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures_gpu import (
    DRIVER,
    H100_UUID,
    REPO,
    gpu_vm,
    h100,
    load_driver,
    nvml_env,
    nvml_stub,  # noqa: F401  (a fixture)
)


def fake_smi(directory, line: str):
    """An nvidia-smi that prints one --query-gpu CSV line, like the real one."""
    directory.mkdir()
    smi = directory / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{line}'\n")
    smi.chmod(0o755)
    return directory


def bench(tmp_path, stub, smi_line: str) -> tuple[int, dict, str]:
    root = load_driver(gpu_vm(tmp_path / "root", "nvidia"))
    env = nvml_env(stub, h100(), tmp_path)
    env["PATH"] = f"{fake_smi(tmp_path / 'bin', smi_line)}:{env['PATH']}"
    out = tmp_path / "out"
    argv = [sys.executable, str(REPO / "bench/gpu_check.py"), "--out", str(out), "--runs", "3",
            "--root", str(root)]  # fmt: skip
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    report = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.txt").read_text() == proc.stdout
    return proc.returncode, report, proc.stdout


def test_same_facts_from_nvml_and_nvidia_smi(tmp_path, nvml_stub):  # noqa: F811
    line = f"NVIDIA H100 80GB HBM3, 81920, {DRIVER}, 00000000:01:00.0, {H100_UUID}"
    code, report, text = bench(tmp_path, nvml_stub, line)
    assert code == 0, text
    assert [s["status"] for s in report["stages"]] == ["ok", "ok", "ok", "skip"]
    assert report["nvml_timing"]["available"] and report["nvml_timing"]["runs"] == 3
    assert report["smi"]["available"] and report["ratio_smi_over_nvml"] > 0
    assert report["cross_check"] == {"compared": True, "equal": True, "differences": []}
    assert "cross-check: same facts" in text


def test_differences_are_listed(tmp_path, nvml_stub):  # noqa: F811
    line = f"NVIDIA H100 80GB HBM3, 40960, 550.00.00, 00000000:01:00.0, {H100_UUID}"
    _code, report, _text = bench(tmp_path, nvml_stub, line)
    differences = report["cross_check"]["differences"]
    assert any("memory.total MiB" in d for d in differences)
    assert any("driver_version" in d for d in differences)
