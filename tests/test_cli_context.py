"""`fl-agent context` through the real console entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from agent.context import render_context

AGENT = [sys.executable, "-m", "agent"]


def run(*args: str, root=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if root is not None:
        env["FL_AGENT_ROOT"] = str(root)
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, env=env, timeout=60)


def test_raw_json_is_exactly_what_was_read(tmp_path) -> None:
    variables = {"A": 'it\'s $HOME `x` \\ "q"\nline2\n', "B": "", "C": "ä€"}
    ctx = tmp_path / "context.sh"
    ctx.write_text(render_context(variables))
    result = run("context", "--context-file", str(ctx), "--raw", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == variables


def test_invalid_values_exit_2_and_name_every_variable(tmp_path) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_text(
        render_context(
            {"FL_GPU_ENABLED": "maybe", "FL_ISOLATION": "x", "ONEAPP_FL_MAX_RETRIES": "-3"}
        )
    )
    result = run("context", "--context-file", str(ctx), "--json")
    assert result.returncode == 2
    data = json.loads(result.stdout)
    assert {e["subject"] for e in data["errors"]} == {
        "FL_GPU_ENABLED",
        "FL_ISOLATION",
        "ONEAPP_FL_MAX_RETRIES",
    }
    text = run("context", "--context-file", str(ctx))
    assert text.returncode == 2 and "FL_ISOLATION" in text.stdout


def test_malformed_file_exit_2_with_line_no_traceback(tmp_path) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_bytes(b"A='1'\nB='2\n")
    result = run("context", "--context-file", str(ctx))
    assert result.returncode == 2
    assert "context.sh:2" in result.stderr or "--context-file:2" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_never_printed(tmp_path) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_text(
        render_context(
            {
                "ONEGATE_ENDPOINT": "http://127.0.0.1:5030",
                "VMID": "7",
                "ONEGATE_TOKEN": "tok-SECRET-123",
            }
        )
    )
    for args in (
        ("context", "--context-file", str(ctx), "--json"),
        ("context", "--context-file", str(ctx)),
    ):
        result = run(*args)
        assert result.returncode == 0
        assert "tok-SECRET-123" not in result.stdout + result.stderr
    data = json.loads(run("context", "--context-file", str(ctx), "--json").stdout)
    assert data["token"] == "***" and data["token_source"] == "ONEGATE_TOKEN"


def test_root_prefix_from_flag_and_environment(tmp_path) -> None:
    directory = tmp_path / "var/run/one-context"
    directory.mkdir(parents=True)
    (directory / "context.sh.network").write_text("FL_LOG_LEVEL='WARNING'\n")
    by_env = run("context", "--json", root=tmp_path)
    by_flag = run("--root", str(tmp_path), "context", "--json")
    for result in (by_env, by_flag):
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["config"]["log_level"] == "WARNING"


def test_missing_context_is_clear(tmp_path) -> None:
    result = run("--root", str(tmp_path), "context")
    assert result.returncode == 2
    assert "no context found" in result.stderr


def test_console_script_installed() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "fl-agent")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for command in ("context", "boot", "validate", "status", "host-check"):
        assert command in result.stdout


def test_context_command_does_not_import_heavy_modules(tmp_path) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_text("A='1'\n")
    code = (
        "import sys; from agent.cli import main; main(['context','--context-file',"
        f"{str(ctx)!r}]); heavy={{'docker','requests','pynvml','pyone','jinja2','torch','flwr'}}"
        "; print(sorted(heavy & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
