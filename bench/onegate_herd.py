"""1,000 simulated agents booting against the OneGate emulator through a 30 s outage.

Each agent is the real client: `agent.onegate.Reporter` (own VMID, token and queue directory),
driven through the boot's own reporting path (`agent.boot.Progress.report`, with its budgets:
2 s per progress report, 0.5 s once one failed, 10 s for the terminal one) from BOOTING to
RUNNING with READY=YES, with the pauses of a real boot between the reports. Agents arrive
uniformly over ARRIVAL_S; the emulator (its own process) stops listening for OUTAGE_S
(connection refused, as when oned's OneGate restarts) and comes back.

Each agent runs as the appliance ships it (agent/onegate): a backlog goes out merged with the
new report; the backoff outlives one request in a process (full jitter, base 2 s, cap 30 s), so
a report whose budget ends before the next allowed probe is queued without a request; and
undelivered reports are re-sent by fl-agent-onegate-resend.timer (`python -m agent.onegate
flush`, OnBootSec=45s, OnUnitInactiveSec=45s), i.e. every PERIOD_S at the VM's own phase (its
boot time), in a new process each time, until the queue is empty. Earlier runs of this bench
compared that design with the client before it: docs/benchmarks.md.

Checks: every report delivered (per VM the FL_STATE values the server saw are in order and end
RUNNING: nothing stale, nothing lost; a backlog goes out merged into one), all READY within
60 s of recovery, and the peak request rate after recovery at most 2x the steady rate
(steady: the mean rate the server saw from STEADY_FROM_S to the outage;
peak: the busiest 1 s in the 60 s after recovery; the busiest 5 s window is reported too).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.common import Check, main_guard, report

AGENTS = 1000
ARRIVAL_S = 90.0
OUTAGE_AT_S = 30.0
OUTAGE_S = 30.0
WORKERS = 4
PERIOD_S = 45.0
HORIZON_AFTER_RECOVERY_S = 75.0
STEPS = (("BOOTING", 0.1), ("CONFIGURING", 0.3), ("VALIDATING", 0.5), ("STARTING", 3.0))
STATES = [name for name, _ in STEPS] + ["RUNNING"]
WINDOW_S = 5.0
STEADY_FROM_S = 10.0  # the first seconds ramp up: not steady
FIRST_VMID = 1000
MODES = ["product"]


# --------------------------------------------------------------------------- the server side


def serve(conn, tokens: dict[int, str]) -> None:
    """The emulator in its own process, driven over a pipe: stop, start, record, templates."""
    from emulators.onegate import OneGateEmulator

    emulator = OneGateEmulator()
    for vmid, token in tokens.items():
        emulator.add_vm(vmid, token=token)
    conn.send(emulator.start())
    while True:
        command = conn.recv()
        if command == "stop":
            emulator.stop()
            conn.send(time.monotonic())
        elif command == "start":
            emulator.start()
            conn.send(time.monotonic())
        elif command == "record":
            conn.send(
                [
                    (
                        r.time,
                        r.status,
                        r.headers.get("X-ONEGATE-VMID"),
                        r.method,
                        r.params.get("type"),
                        r.params.get("data", ""),
                    )
                    for r in emulator.requests
                ]
            )
        elif command == "templates":
            conn.send({vmid: emulator.user_template(vmid) for vmid in tokens})
        else:
            emulator.stop()
            conn.send(None)
            return


# --------------------------------------------------------------------------- the agents


def run_worker(args: tuple) -> None:
    endpoint, agents, t0, resend, base, results = args
    from agent import log

    log.configure("ERROR")
    threads = [
        threading.Thread(target=one_agent, args=(endpoint, a, t0, resend, base, results))
        for a in agents
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def one_agent(endpoint, agent, t0, resend, base, results) -> None:
    from agent.boot import BootOptions, Progress
    from agent.context import Secret
    from agent.onegate import Reporter, new_run

    vmid, token, arrival, seed = agent
    rng = random.Random(seed)
    _sleep_until(t0 + arrival)

    def reporter() -> Reporter:
        return Reporter(
            endpoint=endpoint,
            vmid=str(vmid),
            token=Secret(token),
            queue_dir=directory / "queue",
            total_timeout_s=10.0,
            rng=rng,
        )

    directory = Path(base) / str(vmid)
    run = Progress(reporter(), BootOptions())
    facts = {
        "FL_AGENT_VERSION": "0.1.0",
        "FL_SUPERNODE_IMAGE": "flwr/supernode:1.42.0",
        "FL_FLOWER_VERSION": "1.42.0",
    }
    for state, pause in STEPS:
        run.report(state, **({"facts": facts} if state == "BOOTING" else {}))
        time.sleep(pause)
    run.report(
        "RUNNING",
        facts={"FL_GPU_MODE": "CPU", "FL_VALIDATION": "CPU_ONLY", "FL_GPU_COUNT": "0"},
        ready=True,
    )
    booted = time.monotonic()
    queued_after_boot = run.reporter.pending()
    deadline = t0 + OUTAGE_AT_S + OUTAGE_S + HORIZON_AFTER_RECOVERY_S
    next_at = t0 + arrival + PERIOD_S  # the re-send timer: OnBootSec, then every PERIOD_S
    while run.reporter.pending() and next_at < deadline:
        _sleep_until(next_at)
        new_run(endpoint, str(vmid))  # each tick is a new process
        run.reporter = reporter()
        run.reporter.flush()
        next_at += PERIOD_S
    results.put((vmid, booted, queued_after_boot, run.reporter.pending()))


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --------------------------------------------------------------------------- the run


def simulate(resend: str, agents: int, seed: int = 7) -> dict:
    rng = random.Random(seed)
    tokens = {FIRST_VMID + i: secrets.token_urlsafe(16) for i in range(agents)}
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=serve, args=(child, tokens), daemon=True)
    server.start()
    endpoint = parent.recv()
    base = tempfile.mkdtemp(prefix="fl-herd-")
    results = ctx.Queue()
    t0 = time.monotonic() + 3.0
    plan = [
        (vmid, token, rng.uniform(0, ARRIVAL_S), rng.random()) for vmid, token in tokens.items()
    ]
    workers = [
        ctx.Process(
            target=run_worker, args=((endpoint, plan[w::WORKERS], t0, resend, base, results),)
        )
        for w in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    _sleep_until(t0 + OUTAGE_AT_S)
    parent.send("stop")
    down_at = parent.recv()
    _sleep_until(t0 + OUTAGE_AT_S + OUTAGE_S)
    parent.send("start")
    up_at = parent.recv()
    outcomes = [results.get(timeout=HORIZON_AFTER_RECOVERY_S + ARRIVAL_S + 60) for _ in plan]
    for worker in workers:
        worker.join()
    parent.send("record")
    record = parent.recv()
    parent.send("templates")
    templates = parent.recv()
    parent.send("quit")
    parent.recv()
    server.join()
    shutil.rmtree(base, ignore_errors=True)
    return analyse(resend, t0, down_at, up_at, record, templates, outcomes)


def analyse(resend, t0, down_at, up_at, record, templates, outcomes) -> dict:
    delivered: dict[str, list[str]] = {}
    ready_at: dict[str, float] = {}
    for when, status, vmid, method, kind, data in sorted(record):
        if method == "PUT" and kind == "1" and status == 200:
            fields = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
            if "FL_STATE" in fields:
                delivered.setdefault(vmid, []).append(fields["FL_STATE"])
            if fields.get("READY") == "YES":
                ready_at.setdefault(vmid, when)
    in_order = sum(1 for states in delivered.values() if _in_order(_collapse(states)))
    ready = sum(
        1 for t in templates.values() if t.get("READY") == "YES" and t.get("FL_STATE") == "RUNNING"
    )
    late = [t - up_at for t in ready_at.values() if t > up_at]
    worst_after_recovery = max(late, default=0.0)
    times = [r[0] for r in record]
    steady_from, steady_to = t0 + STEADY_FROM_S, down_at
    steady_rate = sum(steady_from <= t < steady_to for t in times) / (steady_to - steady_from)
    seconds = [_rate(times, up_at + k, 1.0) for k in range(60)]
    windows = [_rate(times, up_at + k, WINDOW_S) for k in range(61 - int(WINDOW_S))]
    peak, peak_window = max(seconds), max(windows)
    total = len(outcomes)
    checks = [
        Check(
            f"[{resend}] every report delivered, in order",
            f"{in_order}/{total} VMs",
            f"{total}/{total} (a backlog merged into one)",
            in_order == total and not any(o[3] for o in outcomes),
        ),
        Check(
            f"[{resend}] READY=YES held", f"{ready}/{total} VMs", f"{total}/{total}", ready == total
        ),
        Check(
            f"[{resend}] last READY after recovery",
            f"{worst_after_recovery:.1f} s",
            "<= 60 s",
            ready == total and worst_after_recovery <= 60,
        ),
        Check(
            f"[{resend}] peak rate after recovery vs steady",
            f"{peak / steady_rate:.2f}x",
            "<= 2x",
            peak <= 2 * steady_rate,
        ),
    ]
    data = {
        "resend": resend,
        "agents": total,
        "arrival_s": ARRIVAL_S,
        "outage": [round(down_at - t0, 2), round(up_at - t0, 2)],
        "requests": len(record),
        "steady_rate_per_s": round(steady_rate, 1),
        "peak_rate_after_recovery_per_s": {"1s": peak, f"{WINDOW_S:.0f}s": round(peak_window, 1)},
        "peak_ratio": {
            "1s": round(peak / steady_rate, 2),
            f"{WINDOW_S:.0f}s": round(peak_window / steady_rate, 2),
        },
        "requests_per_s_after_recovery": seconds,
        "vms_with_every_state_delivered": sum(
            1 for states in delivered.values() if _collapse(states) == STATES
        ),
        "queued_after_boot": sum(1 for o in outcomes if o[2]),
        "still_queued_at_end": sum(1 for o in outcomes if o[3]),
        "ready_after_recovery_s": _quantiles(late),
        "requests_per_s": [_rate(times, t0 + k, 1.0) for k in range(int(up_at - t0) + 60)],
    }
    return {"checks": checks, "data": data}


def _in_order(states: list[str]) -> bool:
    """Each state after the one before it, ending RUNNING: nothing stale, nothing lost."""
    ranks = [STATES.index(s) for s in states]
    return bool(ranks) and ranks == sorted(set(ranks)) and states[-1] == "RUNNING"


def _collapse(states: list[str]) -> list[str]:
    return [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]


def _rate(times: list[float], start: float, width: float) -> float:
    """Requests per second the server saw in [start, start + width)."""
    return sum(start <= t < start + width for t in times) / width


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.5), "p90": pick(0.9), "max": round(ordered[-1], 1)}


def run(modes: list[str], agents: int = AGENTS) -> dict:
    checks, data = [], {}
    for mode in modes:
        result = simulate(mode, agents)
        for check in result["checks"]:
            print(f"  {check.name}: {check.measured}", flush=True)
        checks += result["checks"]
        data[mode] = result["data"]
    return report("onegate_herd", data, checks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modes", nargs="*", choices=[*MODES, []], help="default: all")
    parser.add_argument("--agents", type=int, default=AGENTS)
    args = parser.parse_args()
    main_guard(lambda: run(args.modes or MODES, args.agents))
