"""A local Flower deployment for one release: SuperLink and `flwr` CLI on this host.

Used by tests/test_e2e_flower.py and scripts/demo.sh; the SuperNode is the one the agent boots
(network host, so it dials the SuperLink on 127.0.0.1). Per-release facts (ports, flags, where
the CLI reads its connection) come from agent/flower.py's table.

    python scripts/flower_local.py venv VERSION            # .venv-flwr-VERSION: flwr + CPU torch
    python scripts/flower_local.py superlink VERSION HOME  # run a SuperLink (foreground)
    python scripts/flower_local.py run VERSION HOME [--ca CA.pem] [FLWR-RUN-ARGS...]
                                                           # `flwr run` the reference app, streamed
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "examples" / "app"
TORCH_VERSION = "2.13.0"

sys.path.insert(0, str(REPO))
from agent import flower  # noqa: E402

CONNECTION = flower.CLI_CONNECTION


def release(version: str) -> flower.FlowerRelease:
    found = flower.release_for(version)
    if found is None:
        raise SystemExit(f"Flower {version} is outside {flower.supported_range()}")
    return found


def venv_dir(version: str) -> Path:
    return REPO / f".venv-flwr-{version}"


def ensure_venv(version: str) -> Path:
    """A host venv with flwr==version and CPU torch (the ServerApp builds the torch model)."""
    venv = venv_dir(version)
    python = venv / "bin" / "python"
    ready = python.exists() and (
        subprocess.run(
            [str(python), "-c", f"import torch, flwr; assert flwr.__version__ == '{version}'"],
            capture_output=True,
        ).returncode
        == 0
    )
    if not ready:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                f"flwr=={version}",
                f"torch=={TORCH_VERSION}",
            ],
            check=True,
        )
    return venv


def environment(version: str, flwr_home: Path) -> dict[str, str]:
    """The venv's bin first on PATH: flower-superlink spawns flower-superexec from there."""
    bin_dir = venv_dir(version) / "bin"
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
    }


def superlink_address(version: str) -> str:
    """What a SuperNode on this host (network host) passes as --superlink."""
    return f"127.0.0.1:{release(version).fleet_port}"


def superlink_command(version: str) -> list[str]:
    exe = venv_dir(version) / "bin" / "flower-superlink"
    return [str(exe), "--insecure", *release(version).superlink_flags]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def prepare_app(version: str, dest: Path, flwr_home: Path, ca: Path | None = None) -> Path:
    """A copy of the reference app wired to the local SuperLink's Control API (over TLS,
    trusting `ca`, when given), through the same connection text the agent writes
    (agent/flower.py cli_connection).

    Flower <= 1.25 reads [tool.flwr.federations] from the app; later releases read
    $FLWR_HOME/config.toml and rewrite such a section in place, hence the copy.
    """
    address = f"127.0.0.1:{release(version).control_port}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(APP, dest, ignore=shutil.ignore_patterns(".flwr", "__pycache__"))
    flwr_home.mkdir(parents=True, exist_ok=True)
    filename, text = flower.cli_connection(version, address, str(ca) if ca else None)
    if filename == "config.toml":
        (flwr_home / filename).write_text(text)
    else:
        with (dest / "pyproject.toml").open("a") as out:
            out.write("\n" + text[text.index("[tool.flwr.federations]") :])
    return dest


def run_command(version: str, extra: list[str] | None = None) -> list[str]:
    """`flwr run . local-deployment --stream`: returns when the run has finished."""
    exe = venv_dir(version) / "bin" / "flwr"
    return [str(exe), "run", ".", CONNECTION, "--stream", *(extra or [])]


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("venv", "superlink", "run"):
        print(__doc__, file=sys.stderr)
        return 2
    action, version = argv[0], argv[1]
    release(version)
    if action == "venv":
        print(ensure_venv(version))
        return 0
    home = Path(argv[2]) if len(argv) > 2 else Path.cwd() / ".flwr-home"
    env = environment(version, home)
    if action == "superlink":
        home.mkdir(parents=True, exist_ok=True)
        os.execve(superlink_command(version)[0], superlink_command(version), env)
    extra, ca = argv[3:], None
    if extra[:1] == ["--ca"] and len(extra) > 1:
        extra, ca = extra[2:], Path(extra[1])
    app = prepare_app(version, home / "app", home, ca)
    return subprocess.run(run_command(version, extra), cwd=app, env=env).returncode


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
