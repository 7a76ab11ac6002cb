"""Toolkit mode resolution and Docker's --gpus path, per toolkit and moby version.

Rules from nvidia-container-toolkit v1.14.0..v1.18.0 (internal/info/auto.go,
internal/runtime/runtime_factory.go, cmd/nvidia-container-runtime-hook) and moby
(daemon/nvidia_linux.go up to v28, daemon/devices_nvidia_linux.go on master).
"""

from __future__ import annotations

import os
import time

import pytest

from agent.paths import Root
from agent.toolkit_modes import (
    gpus_path,
    installed_at,
    process_started_at,
    resolve_mode,
    series,
    started_before,
)


@pytest.mark.parametrize(
    ("version", "component", "configured", "mode", "ok"),
    [
        ("1.14.6", "runtime", None, "legacy", True),
        ("1.17.8", "runtime", "auto", "legacy", True),
        ("1.18.0", "runtime", "auto", "jit-cdi", True),  # the 1.18 runtime default
        ("1.18.0", "hook", "auto", "legacy", True),  # the hook keeps legacy
        ("1.18.0", "hook", "cdi", "cdi", False),  # --gpus refused
        ("1.17.8", "hook", "csv", "csv", False),  # csv refused by the hook
        ("1.17.8", "runtime", "jit-cdi", "jit-cdi", False),  # no jit-cdi before 1.18
        ("1.18.2", "runtime", "jit-cdi", "jit-cdi", True),
        ("1.16.2", "runtime", "bogus", "bogus", False),
    ],
)
def test_mode_per_toolkit_version(version, component, configured, mode, ok):
    resolved = resolve_mode(configured, version, component=component)
    assert (resolved.mode, resolved.ok) == (mode, ok), resolved.reason


def test_auto_special_cases():
    assert resolve_mode(None, "1.14.0", only_cdi_devices=True).mode == "cdi"
    assert resolve_mode(None, "1.18.0", component="hook", only_cdi_devices=True).ok is False
    assert resolve_mode(None, "1.18.0", platform="tegra").mode == "csv"


def test_configured_means_hook_at_engine_start_not_daemon_json():
    ready = gpus_path(hook_on_path=True, hook_at_engine_start=True, toolkit_version="1.17.8")
    assert ready.ok and ready.injection == "hook" and not ready.restart_engine


def test_engine_started_before_the_toolkit_needs_one_restart():
    path = gpus_path(hook_on_path=True, hook_at_engine_start=False, toolkit_version="1.18.0")
    assert (path.registered, path.ok, path.restart_engine) == (False, False, True)
    missing = gpus_path(hook_on_path=False, hook_at_engine_start=False)
    assert (missing.ok, missing.restart_engine) == (False, False)


def test_hook_refuses_cdi_mode_unless_mode_detection_is_skipped():
    refused = gpus_path(hook_on_path=True, hook_at_engine_start=True, configured_mode="cdi")
    assert not refused.ok
    skipped = gpus_path(
        hook_on_path=True,
        hook_at_engine_start=True,
        configured_mode="cdi",
        skip_mode_detection=True,
    )
    assert skipped.ok


def test_moby_29_tries_cdi_first_when_nvidia_cdi_hook_is_there():
    path = gpus_path(
        hook_on_path=False, hook_at_engine_start=False, cdi_hook_at_engine_start=True, moby_major=29
    )
    assert path.registered and path.injection == "cdi-then-hook"
    older = gpus_path(
        hook_on_path=False, hook_at_engine_start=False, cdi_hook_at_engine_start=True, moby_major=28
    )
    assert not older.registered


def test_started_before_and_series():
    assert started_before(engine_started_at=200.0, installed_at=100.0)
    assert not started_before(engine_started_at=100.0, installed_at=200.0)
    assert started_before(None, 5.0)
    assert series("1.18.0-1") == (1, 18) and series("garbage") is None


def test_timestamps_of_this_machine(tmp_path):
    started = process_started_at(Root(), os.getpid())
    assert started is not None and started <= time.time() + 1
    assert abs(started - time.time()) < 3600  # this test process started moments ago
    hook = tmp_path / "usr/bin/nvidia-container-runtime-hook"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\n")
    assert installed_at(Root(tmp_path), "/usr/bin/nvidia-container-runtime-hook") >= started
    assert not started_before(
        started, installed_at(Root(tmp_path), "/usr/bin/nvidia-container-runtime-hook")
    )
    assert (
        process_started_at(Root(tmp_path), 1) is None and installed_at(Root(tmp_path), None) is None
    )


def test_start_time_parses_a_comm_with_spaces(tmp_path):
    (tmp_path / "proc/42").mkdir(parents=True)
    fields = ["S"] + ["0"] * 18 + ["12345"] + ["0"] * 30
    (tmp_path / "proc/42/stat").write_text("42 (docker d) " + " ".join(fields) + "\n")
    (tmp_path / "proc/stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    assert process_started_at(Root(tmp_path), 42) == 1700000000 + 12345 / os.sysconf("SC_CLK_TCK")
