"""What `fl-agent watch` costs while idle, and how fast it acts (issue 13's budgets).

    .venv/bin/python -m bench.watch_budget [--window 150] [--interval 60] [--xids 5]

Two real watches run side by side over the same window, each `python -m agent watch
--interval 60` as the unit runs it, against a private Docker engine (bench/engine.py, with a
no-op NVIDIA hook on dockerd's PATH) holding a GPU-mode stand-in SuperNode container
(tests/images/gpu-standin) and the OneGate emulator:
- `gpu`: a GPU node, NVML from the stand-in library (tests/nvml_stub). Each tick reads the
  health counters, runs `nvidia-smi -L` in the container and reads its log; between ticks it
  waits on NVML events in 1 s waits. The stand-in's event wait polls its trigger file every
  10 ms, which real NVML does not (it blocks in the driver): its CPU is an upper bound.
- `cpu`: a CPU node without an NVML library: each tick reads the container's log; between
  ticks it sleeps in 1 s steps.

Measured: peak RSS (VmHWM) after the window; CPU (utime + stime of the process) over the
window, as a share of one core. The issue asks for 10 minutes; the window here is shorter
(2.5 minutes by default, on a 2-core machine shared with other work) and holds the same
mix of ticks and waits per minute, so the share extrapolates as measured: said as such in
the results. Then on the `gpu` watch: NVML XID events written to the stand-in's trigger file
until the OneGate emulator receives the report (each one's latency), and a container whose
GPU access is lost (the stand-in's per-start flag, as after a daemon-reload) until the
watch reports it restored, against the interval.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Check, bench_env, main_guard, report

H100_UUID = "GPU-5d3b1c2a-1111-4a2b-9c3d-0123456789ab"
VMID = 42
TOKEN = "bench-token"
STANDIN = "fl-agent-test/gpu-standin:latest"
BUSYBOX = "fl-agent/busybox:latest"
HOOK = "#!/bin/sh\ncat >/dev/null\nexit 0\n"
RSS_LIMIT_MB = 40.0
CPU_LIMIT_PCT = 0.5
XID_LIMIT_S = 2.0


def main() -> dict:
    work = Path(tempfile.mkdtemp(prefix="fl-watch-bench-"))
    try:
        return _run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work: Path) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=150.0, help="idle seconds measured")
    parser.add_argument("--interval", type=float, default=60.0, help="the watch's interval")
    parser.add_argument("--xids", type=int, default=5, help="XID events timed")
    args = parser.parse_args()
    from bench.engine import PrivateEngine
    from emulators.onegate import OneGateEmulator
    from tests.fixtures_gpu import build_stub, h100

    hook_dir = work / "bin"
    hook_dir.mkdir()
    (hook_dir / "nvidia-container-runtime-hook").write_text(HOOK)
    (hook_dir / "nvidia-container-runtime-hook").chmod(0o755)
    stub = build_stub(work / "nvml")
    with (
        PrivateEngine(path_first=(str(hook_dir),), own_netns=True) as engine,
        OneGateEmulator() as onegate,
    ):
        engine.load_image(BUSYBOX)
        engine.docker("build", "-q", "-t", STANDIN, str(REPO / "tests/images/gpu-standin"))
        onegate.add_vm(VMID, token=TOKEN)
        onegate.add_vm(VMID + 1, token=TOKEN + "-cpu")
        spec, container_id = _start_container(engine.host)
        trigger = work / "events.jsonl"
        trigger.write_text("")
        scenario = work / "scenario.json"
        scenario.write_text(json.dumps(h100()))
        nvml = {"LD_LIBRARY_PATH": str(stub), "NVML_STUB_SCENARIO": str(scenario)}
        nvml["NVML_STUB_EVENTS"] = str(trigger)
        _warm_bytecode()
        watches = {
            "gpu": _watch(work / "gpu", onegate, VMID, TOKEN, engine.host, spec, container_id,
                          "GPU", nvml, args.interval),
            "cpu": _watch(work / "cpu", onegate, VMID + 1, TOKEN + "-cpu", engine.host, spec,
                          container_id, "CPU", {"LD_LIBRARY_PATH": str(work / "none")},
                          args.interval),
            "nvml_wait_floor": _floor(nvml),
        }  # fmt: skip
        try:
            time.sleep(5)  # both started and made their first tick
            before = {name: _cpu_s(p.pid) for name, p in watches.items()}
            start = time.monotonic()
            time.sleep(args.window)
            elapsed = time.monotonic() - start
            idle = {
                name: {
                    "cpu_s": round(_cpu_s(p.pid) - before[name], 3),
                    "cpu_pct_of_one_core": round(100 * (_cpu_s(p.pid) - before[name]) / elapsed, 3),
                    "peak_rss_mb": round(_hwm_mb(p.pid), 1),
                }
                for name, p in watches.items()
            }
            latencies = _xid_latencies(onegate, trigger, args.xids)
            restored = _lost_access(engine, onegate, args.interval)
        finally:
            for process in watches.values():
                process.send_signal(signal.SIGTERM)
                if process.wait(30) not in (0, -signal.SIGTERM):
                    raise RuntimeError(f"a watch exited {process.returncode} on SIGTERM")
    own_gpu_pct = (
        idle["gpu"]["cpu_pct_of_one_core"] - idle["nvml_wait_floor"]["cpu_pct_of_one_core"]
    )
    checks = [
        Check(f"idle peak RSS ({name})", f"{d['peak_rss_mb']} MB", f"< {RSS_LIMIT_MB} MB",
              d["peak_rss_mb"] < RSS_LIMIT_MB)
        for name, d in idle.items() if name != "nvml_wait_floor"
    ] + [
        Check(f"idle CPU ({name}, {elapsed:.0f} s window)", f"{d['cpu_pct_of_one_core']}%",
              f"< {CPU_LIMIT_PCT}% of one core", d["cpu_pct_of_one_core"] < CPU_LIMIT_PCT)
        for name, d in idle.items() if name == "cpu"
    ] + [
        Check("idle CPU (gpu) less the stand-in's own event waits",
              f"{own_gpu_pct:.3f}%", f"< {CPU_LIMIT_PCT}% of one core",
              own_gpu_pct < CPU_LIMIT_PCT),
    ] + [
        Check("XID event to OneGate (max)", f"{max(latencies):.3f} s", f"< {XID_LIMIT_S} s",
              max(latencies) < XID_LIMIT_S),
        Check("lost GPU access back", f"{restored:.1f} s", f"within one interval "
              f"({args.interval:.0f} s) plus the repair", restored < args.interval + 15),
    ]  # fmt: skip
    data = {
        "window_s": round(elapsed, 1),
        "interval_s": args.interval,
        "idle": idle,
        "xid_to_onegate_s": [round(x, 3) for x in latencies],
        "lost_access_restored_s": round(restored, 1),
        "note": (
            f"idle CPU measured over {elapsed:.0f} s, not the issue's 10 minutes; the window "
            "holds the same ticks per minute, so the share is extrapolated as measured. The "
            "gpu watch's CPU includes the NVML stand-in's 10 ms polling of its trigger file; "
            "nvml_wait_floor is a process doing only those waits, measured alongside."
        ),
    }
    return report("watch_budget", data, checks)


def _warm_bytecode() -> None:
    """Compile what the watch imports into the bench's bytecode cache first: an installed
    agent has it compiled (pip does at install), and compiling would count in the peak RSS."""
    modules = "agent.cli, agent.watch, agent.engine, agent.onegate.transport, requests, pynvml"
    argv = [sys.executable, "-c", f"import {modules}"]
    subprocess.run(argv, env=bench_env({**os.environ, "PYTHONPATH": str(REPO)}), check=True)


def _start_container(host: str) -> tuple[dict, str]:
    """The SuperNode stand-in in GPU mode, created as the boot creates it (its spec)."""
    from agent.engine import Engine, create_body
    from agent.outcome import Mode
    from agent.plan import ContainerSpec

    spec = ContainerSpec(
        image=STANDIN,
        command=(),
        environment=(),
        mode=Mode.GPU,
        runtime=None,
        gpu_device_ids=(H100_UUID,),
        tmpfs=(("/run/gpu-standin", "rw"),),
        network_mode="none",
    )
    engine = Engine(host)
    container_id = engine.create(create_body(spec), spec.name)
    engine.start(container_id)
    return spec.to_dict(), container_id


def _watch(directory, onegate, vmid, token, host, spec, container_id, mode, nvml, interval):
    """One `fl-agent watch` on its own root: a boot record, a context; the running process."""
    from agent.context import render_context

    state = directory / "root/var/lib/fl-agent"
    state.mkdir(parents=True)
    record = {
        "state": "RUNNING",
        "plan": {"spec": spec},
        "container": {"container_id": container_id, "mode": mode, "spec_hash": spec["spec_hash"]},
    }
    (state / "state.json").write_text(json.dumps(record))
    variables = {"ONEGATE_ENDPOINT": onegate.endpoint, "VMID": str(vmid), "TOKEN": "YES"}
    (directory / "context.sh").write_text(render_context(variables))
    (directory / "token.txt").write_text(token + "\n")
    env = bench_env({**os.environ, **nvml, "DOCKER_HOST": host, "PYTHONPATH": str(REPO)})
    argv = [sys.executable, "-m", "agent", "--root", str(directory / "root"), "watch"]
    argv += ["--context-file", str(directory / "context.sh"), "--interval", str(interval)]
    log = open(directory / "watch.log", "wb")  # noqa: SIM115 - the child keeps it
    with log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log)


_FLOOR = """
from agent.gpu.health import NvmlEvents
with NvmlEvents() as events:
    while True:
        events.wait(1000)
"""


def _floor(nvml: dict) -> subprocess.Popen:
    """Only the watch's event waits on the stand-in, nothing else: what of the gpu watch's CPU
    is the stand-in's own polling."""
    env = bench_env({**os.environ, **nvml, "PYTHONPATH": str(REPO)})
    return subprocess.Popen([sys.executable, "-c", _FLOOR], env=env)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _puts(onegate) -> list:
    """The reports that carried an XID (only the gpu watch has NVML)."""
    return [
        r for r in onegate.requests
        if r.method == "PUT" and r.params.get("type") == "1"
        and any(line.startswith("FL_GPU_LAST_XID=") for line in r.data_lines)
    ]  # fmt: skip


def _xid_latencies(onegate, trigger: Path, count: int) -> list[float]:
    """Seconds from an XID written to the stand-in's trigger to its report at OneGate."""
    latencies = []
    for i in range(count):
        seen = len(_puts(onegate))
        time.sleep(0.5)  # the XIDs alternate: each one is a change, so each is sent
        written = time.monotonic()
        with trigger.open("a") as f:
            f.write(json.dumps({"gpu": 0, "type": 8, "data": 13 if i % 2 else 31}) + "\n")
        deadline = written + 10
        while len(_puts(onegate)) == seen and time.monotonic() < deadline:
            time.sleep(0.002)
        arrived = _puts(onegate)
        latencies.append(arrived[-1].time - written if len(arrived) > seen else 10.0)
    return latencies


def _lost_access(engine, onegate, interval: float) -> float:
    """Seconds from the container losing its GPUs to the watch reporting them restored."""
    engine.docker("exec", "flower-supernode", "sh", "-c", "touch /run/gpu-standin/lost")
    lost = time.monotonic()
    while time.monotonic() - lost < interval + 60:
        repair = onegate.user_template(VMID).get("FL_GPU_ACCESS_REPAIR", "")
        if repair.endswith(": restored"):
            return time.monotonic() - lost
        time.sleep(0.1)
    return float("inf")


if __name__ == "__main__":
    main_guard(main)
