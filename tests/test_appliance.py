"""The appliance: service report and motd (pure), and the image booted with systemd (docker)."""

from __future__ import annotations

import stat

from agent import appliance
from agent.paths import Root

RUNNING = {
    "state": "RUNNING",
    "mode": "CPU",
    "flower_version": "1.42.0",
    "agent_version": "0.1.0",
    "finished_at": "2026-11-28T15:00:00Z",
    "plan": {
        "mode": "CPU",
        "reason": "no NVIDIA GPU in this VM",
        "spec": {
            "image": "fl-agent/supernode:1.42.0",
            "command": ["--insecure", "--superlink", "10.0.0.5:8000"],
        },
    },
    "container": {"container_id": "0123456789abcdef0123", "action": "created"},
    "problems": [],
}


def test_service_report_says_what_runs_which_version_and_why():
    text = appliance.render_service_report(RUNNING)
    assert text.startswith("[Flower SuperNode]\n")
    rows = dict(
        (k.strip(), v.strip())
        for k, v in (line.split("=", 1) for line in text.splitlines() if " = " in line)
    )
    assert rows["state"] == "RUNNING"
    assert rows["runs"] == "container flower-supernode"
    assert rows["container id"] == "0123456789ab"
    assert rows["image"] == "fl-agent/supernode:1.42.0"
    assert rows["flower version"] == "1.42.0"
    assert rows["superlink"] == "10.0.0.5:8000"
    assert rows["mode"] == "CPU"
    assert rows["why"] == "no NVIDIA GPU in this VM"
    assert "[Problems]" not in text


def test_service_report_of_a_gpu_fallback_gives_the_start_failure_as_why():
    degraded = {
        **RUNNING,
        "state": "DEGRADED",
        "plan": {**RUNNING["plan"], "mode": "GPU", "reason": "the GPU stack validated"},
        "problems": [
            {
                "name": "gpu_start_failed",
                "subject": "flower-supernode",
                "message": "the engine refused the GPU request,\nrunning on CPU",
                "fix": "install the toolkit",
            }
        ],
    }
    text = appliance.render_service_report(degraded)
    assert "why" in text and "flower-supernode: the engine refused the GPU request, running" in text
    assert "[Problems]\n1 = flower-supernode: the engine refused" in text
    assert "(fix: install the toolkit)" in text
    assert all("\n" not in line for line in text.splitlines())


def test_service_report_of_a_failed_boot_runs_nothing():
    failed = {
        "state": "FAILED",
        "mode": "NONE",
        "problems": [{"name": "invalid_value", "subject": "FL_GPU_ENABLED", "message": "bad"}],
    }
    text = appliance.render_service_report(failed)
    assert "runs           = nothing" in text
    assert "why            = FL_GPU_ENABLED: bad" in text


def test_writers_set_modes_and_toggle_the_ready_marker(tmp_path):
    root = Root(tmp_path)
    appliance.write_service_report(root, RUNNING)
    report = tmp_path / "etc/one-appliance/config"
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert "fl-agent/supernode:1.42.0" in report.read_text()

    motd = tmp_path / "etc/motd"
    appliance.mark_ready(root)
    assert "All set and ready to serve" in motd.read_text()
    assert stat.S_IMODE(motd.stat().st_mode) == 0o644
    appliance.clear_ready(root)
    assert "All set and ready to serve" not in motd.read_text()
    assert "not running" in motd.read_text()
