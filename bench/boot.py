"""Boot benchmarks on a private Docker engine (bench/engine.py), side by side with the CLI.

- converged: `fl-agent boot` with nothing to change (container running, same spec) against
  `python -c "import docker"` (the floor of any agent on the docker SDK) and against the peer
  appliance's boot path (`docker rm -f` then `docker run -d` of the same spec).
  Targets: median <= 1.5x the floor, and faster than the peer's path.
- first: first boot to RUNNING with the image local, with `--stability-window 0` (the deliberate
  3 s window is not counted; the two `inspect`s around it are), against `docker run -d` of the
  same spec through the CLI. Target: median <= 2.0x (issue 12).
- memory: the peak RSS of the boot process (os.wait4's ru_maxrss) for a first boot and a
  converged boot, both with OneGate reporting on (the emulator). Target: under 80 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    FL_AGENT,
    PYTHON,
    REPO,
    STANDIN_IMAGE,
    Check,
    Stats,
    bench_env,
    command,
    interleaved,
    main_guard,
    ratio_check,
    report,
)
from bench.engine import MAIN_HOST, PrivateEngine

BASE_CONTEXT = {
    "FL_SUPERLINK_ADDRESS": "127.0.0.1:9092",
    "FL_TLS_ENABLED": "NO",
    "FL_NODE_CONFIG": "partition-id=0 num-partitions=1",
    "FL_GPU_ENABLED": "NO",
    "FL_SUPERNODE_IMAGE": STANDIN_IMAGE,
}


def ensure_standin() -> None:
    """Build the stand-in SuperNode image on the machine's engine when it is not there."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    found = subprocess.run(
        ["docker", "-H", MAIN_HOST, "image", "inspect", STANDIN_IMAGE],
        env=env,
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        subprocess.run(
            [
                "docker",
                "-H",
                MAIN_HOST,
                "build",
                "-q",
                "-t",
                STANDIN_IMAGE,
                str(REPO / "tests/images/supernode-standin"),
            ],
            env=env,
            capture_output=True,
            check=True,
            timeout=300,
        )


@dataclass
class Setup:
    """A private engine with the stand-in image, a tmp root and a context file."""

    engine: PrivateEngine
    root: Path
    context: Path

    def boot_argv(self, stability: str = "0") -> list[str]:
        return [
            FL_AGENT,
            "--root",
            str(self.root),
            "--log-level",
            "WARNING",
            "boot",
            "--context-file",
            str(self.context),
            "--stability-window",
            stability,
            "--json",
        ]

    def boot(self) -> dict:
        result = subprocess.run(
            self.boot_argv(),
            env=bench_env(self.engine.env),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"boot failed ({result.returncode}): {result.stdout[-1500:]}")
        return json.loads(result.stdout)

    def remove(self) -> None:
        self.engine.docker("rm", "-f", "flower-supernode", check=False)

    def peer_run_argv(self, spec: dict) -> list[str]:
        return ["docker", "run", "-d", *cli_args(spec)]


@contextmanager
def setup(extra: dict[str, str] | None = None, token: str | None = None) -> Iterator[Setup]:
    from agent.context import render_context

    ensure_standin()
    with tempfile.TemporaryDirectory() as tmp, PrivateEngine() as engine:
        engine.load_image(STANDIN_IMAGE)
        context = Path(tmp) / "context" / "context.sh"
        context.parent.mkdir()
        context.write_text(render_context({**BASE_CONTEXT, **(extra or {})}))
        if token:
            (context.parent / "token.txt").write_text(token)
        yield Setup(engine, Path(tmp) / "root", context)


def cli_args(spec: dict) -> list[str]:
    """`docker run` options for the plan's spec: the same container the agent creates."""
    args = [
        "--name",
        spec["name"],
        "--restart",
        spec["restart_policy"],
        "--network",
        spec["network_mode"],
    ]
    args += [x for cap in spec["cap_drop"] for x in ("--cap-drop", cap)]
    args += [x for opt in spec["security_opt"] for x in ("--security-opt", opt)]
    args += [x for k, v in spec["environment"].items() for x in ("-e", f"{k}={v}")]
    args += [x for k, v in spec["labels"].items() for x in ("--label", f"{k}={v}")]
    args += [x for b in spec["binds"] for x in ("-v", f"{b['source']}:{b['target']}:{b['mode']}")]
    args += [x for path, opts in spec["tmpfs"] for x in ("--tmpfs", f"{path}:{opts}")]
    if spec["user"]:
        args += ["--user", spec["user"]]
    if spec["runtime"]:
        args += ["--runtime", spec["runtime"]]
    return [*args, spec["image"], *spec["command"]]


def bench_converged(runs: int) -> dict:
    with setup() as s:
        record = s.boot()
        spec = record["plan"]["spec"]
        peer = s.peer_run_argv(spec)
        stats = interleaved(
            {
                'python -c "import docker"': command([PYTHON, "-c", "import docker"]),
                "fl-agent boot (nothing to change)": command(s.boot_argv(), s.engine.env),
                "peer: docker rm -f + docker run -d": _peer_recreate(s, peer),
            },
            runs,
        )
        after = s.boot()
    agent = stats["fl-agent boot (nothing to change)"]
    peer_stats = stats["peer: docker rm -f + docker run -d"]
    checks = [
        ratio_check(
            "converged boot vs import docker", agent, stats['python -c "import docker"'], 1.5
        ),
        Check(
            "converged boot vs peer's rm -f + run -d",
            f"{agent.median / peer_stats.median:.2f}x",
            "< 1.0x",
            agent.median < peer_stats.median,
        ),
        Check(
            "converged boot touched nothing",
            after["container"]["action"],
            "unchanged",
            after["container"]["action"] == "unchanged",
        ),
    ]
    return report("boot_converged", _data(stats, record), checks)


def _peer_recreate(s: Setup, peer: list[str]):
    remove = command(["docker", "rm", "-f", "flower-supernode"], s.engine.env)
    run = command(peer, s.engine.env)

    def step() -> None:
        remove()
        run()

    return step


def bench_first(runs: int) -> dict:
    with setup() as s:
        spec = s.boot()["plan"]["spec"]
        stats = interleaved(
            {
                "fl-agent boot (first, --stability-window 0)": command(s.boot_argv(), s.engine.env),
                "docker run -d (same spec)": command(s.peer_run_argv(spec), s.engine.env),
            },
            runs,
            before={
                "fl-agent boot (first, --stability-window 0)": s.remove,
                "docker run -d (same spec)": s.remove,
            },
        )
        s.remove()
        record = s.boot()
    agent = stats["fl-agent boot (first, --stability-window 0)"]
    checks = [
        ratio_check("first boot vs docker run -d", agent, stats["docker run -d (same spec)"], 2.0),
        Check(
            "first boot created the container",
            record["container"]["action"],
            "created",
            record["container"]["action"] == "created",
        ),
    ]
    return report("boot_first", _data(stats, record), checks)


def _data(stats: dict[str, Stats], record: dict) -> dict:
    return {
        "sides": {k: v.to_dict() for k, v in stats.items()},
        "engine": "private dockerd (bench/engine.py), stand-in SuperNode image",
        "agent_timings_ms_last_run": record.get("timings_ms"),
    }


def peak_rss_kib(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """(exit code, peak RSS in KiB) of one process, from wait4's rusage (that child alone)."""
    process = subprocess.Popen(
        argv, env=bench_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss


def bench_memory(runs: int) -> dict:
    from emulators.onegate import OneGateEmulator

    with OneGateEmulator() as onegate:
        vm = onegate.add_vm(7, ips=("127.0.0.1",))
        extra = {"ONEGATE_ENDPOINT": onegate.endpoint, "VMID": "7"}
        with setup(extra, token=vm.token) as s:
            first, converged = [], []
            for _ in range(runs):
                s.remove()
                first.append(peak_rss_kib(s.boot_argv(), s.engine.env))
                converged.append(peak_rss_kib(s.boot_argv(), s.engine.env))
            ready = onegate.user_template(7).get("READY")
    peak = max(rss for _, rss in first + converged) / 1024
    codes = sorted({code for code, _ in first + converged})
    checks = [
        Check("peak RSS of a boot (OneGate on)", f"{peak:.1f} MB", "< 80 MB", peak < 80),
        Check(
            "boots ended RUNNING with READY=YES",
            f"exit {codes}, READY={ready}",
            "exit [0]",
            codes == [0] and ready == "YES",
        ),
    ]
    data = {
        "first_boot_max_rss_kib": [rss for _, rss in first],
        "converged_boot_max_rss_kib": [rss for _, rss in converged],
        "measure": "os.wait4 ru_maxrss of the fl-agent process (KiB); MB = MiB here",
    }
    return report("boot_memory", data, checks)


BENCHES = {"converged": bench_converged, "first": bench_first, "memory": bench_memory}
DEFAULT_RUNS = {"converged": 40, "first": 30, "memory": 5}


def run(which: list[str] | None = None, runs: int | None = None) -> list[dict]:
    return [BENCHES[name](runs or DEFAULT_RUNS[name]) for name in which or list(BENCHES)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("which", nargs="*", choices=[*BENCHES, []])
    parser.add_argument("--runs", type=int)
    args = parser.parse_args()
    results = run(args.which, args.runs)
    main_guard(lambda: {"checks": [c for r in results for c in r["checks"]]})
