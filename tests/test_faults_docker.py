"""What VMs do to a boot: two boots at once, a full disk, the engine stopped mid-boot, OneGate
answering 500 or 401. Each ends in the expected state, within a bounded time.

The boots run on a private Docker engine (bench/engine.py: its own dockerd, socket and data
root), so stopping the engine stops nobody else's tests, and the fixed container name
`flower-supernode` is not shared with other test runs on the machine's engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.engine import PrivateEngine
from emulators.onegate import OneGateEmulator
from tests.context_cd import write_context_cd

pytestmark = pytest.mark.docker

NAME = "flower-supernode"
VMID = 42
TOKEN = "tok-faults-42"


@pytest.fixture(scope="module")
def engine(standin_images):
    if os.geteuid() != 0:
        pytest.skip("a private dockerd needs root")
    with PrivateEngine() as private:
        private.load_image(standin_images["ok"])
        yield private


@pytest.fixture
def fresh(engine):
    """No SuperNode container before and after; the engine up after, whatever happened."""
    engine.docker("rm", "-f", NAME, check=False)
    yield engine
    if engine.process is None or not engine.answers():
        engine.stop()
        engine.start()
    engine.docker("rm", "-f", NAME, check=False)


def context(tmp_path: Path, image: str, onegate: OneGateEmulator | None = None, **extra) -> Path:
    directory = tmp_path / "cd"
    directory.mkdir(exist_ok=True)
    variables = {
        "FL_SUPERLINK_ADDRESS": "127.0.0.1:9092",
        "FL_TLS_ENABLED": "NO",
        "FL_NODE_CONFIG": "partition-id=0 num-partitions=1",
        "FL_GPU_ENABLED": "NO",
        "FL_SUPERNODE_IMAGE": image,
        **extra,
    }
    if onegate is not None:
        variables.update(ONEGATE_ENDPOINT=onegate.endpoint, VMID=str(VMID), TOKEN="YES")
    return write_context_cd(directory, variables, TOKEN if onegate else None)


def start_boot(engine: PrivateEngine, root: Path, ctx: Path, *flags: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "agent",
        "--root",
        str(root),
        "boot",
        "--context-file",
        str(ctx),
        "--json",
        *flags,
    ]
    if "--stability-window" not in flags:
        argv += ["--stability-window", "1"]
    return subprocess.Popen(
        argv, env=engine.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, timeout_s: float = 120) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=timeout_s)
    assert TOKEN not in out + err
    return proc.returncode, json.loads(out), err


def boot(engine, root, ctx, *flags, timeout_s: float = 120) -> tuple[int, dict, str]:
    return finish(start_boot(engine, root, ctx, *flags), timeout_s)


def creations(engine: PrivateEngine, since: float) -> int:
    """How many times the engine created the SuperNode container since `since`."""
    events = engine.docker(
        "events",
        "--since",
        f"{since:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        f"container={NAME}",
        "--format",
        "{{.Actor.Attributes.name}}",
    ).stdout.split()
    return events.count(NAME)


def running_ids(engine: PrivateEngine) -> list[str]:
    return engine.docker("ps", "-q", "--filter", f"name=^{NAME}$").stdout.split()


# --- two boots at once


def test_two_boots_at_once_one_exits_cleanly(fresh, standin_images, tmp_path):
    ctx = context(tmp_path, standin_images["ok"])
    since = time.time()
    procs = [start_boot(fresh, tmp_path / "root", ctx, "--stability-window", "2") for _ in "ab"]
    results = [finish(p) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    winner = next(record for code, record, _ in results if code == 0)
    loser = next(record for code, record, _ in results if code == 1)
    assert winner["container"]["action"] == "created"
    assert [p["name"] for p in loser["problems"]] == ["boot_in_progress"]
    assert "container" not in loser
    assert creations(fresh, since) == 1
    assert len(running_ids(fresh)) == 1
    state = json.loads((tmp_path / "root/var/lib/fl-agent/state.json").read_text())
    assert state["state"] == "RUNNING"  # the loser never overwrote the winner's state


def test_two_boots_at_once_the_second_waits_then_changes_nothing(fresh, standin_images, tmp_path):
    ctx = context(tmp_path, standin_images["ok"])
    since = time.time()
    procs = [
        start_boot(fresh, tmp_path / "root", ctx, "--stability-window", "2", "--lock-wait", "60")
        for _ in "ab"
    ]
    results = [finish(p) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], results
    actions = sorted(record["container"]["action"] for _, record, _ in results)
    assert actions == ["created", "unchanged"]
    assert creations(fresh, since) == 1
    assert len(running_ids(fresh)) == 1


# --- a full disk under the state directory


def test_full_disk_under_the_state_directory(fresh, standin_images, tmp_path):
    root = tmp_path / "root"
    state_dir = root / "var/lib/fl-agent"
    state_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(state_dir)], check=True)
    try:
        with OneGateEmulator() as onegate:
            onegate.add_vm(VMID, token=TOKEN)
            ctx = context(tmp_path, standin_images["ok"], onegate)
            code, first, _ = boot(fresh, root, ctx)
            assert code == 0, first
            before = (state_dir / "state.json").read_bytes()
            _fill(state_dir / "filler")

            ctx = context(tmp_path, standin_images["ok"], onegate, FL_LOG_LEVEL="DEBUG")
            code, record, err = boot(fresh, root, ctx)
            assert code == 0, record  # the node runs: a state file is not the node
            assert record["state"] == "RUNNING" and record["container"]["action"] == "replaced"
            assert "state_write_failed" in [p["name"] for p in record["problems"]]
            assert "state_write_failed" in err
            assert (state_dir / "state.json").read_bytes() == before  # old, whole, parseable
            json.loads(before)
            assert not [p.name for p in state_dir.iterdir() if ".tmp." in p.name]
            assert running_ids(fresh) == [record["container"]["container_id"][:12]]
            assert onegate.user_template(VMID)["READY"] == "YES"

            (state_dir / "filler").unlink()
            code, again, _ = boot(fresh, root, ctx)
            assert code == 0 and again["container"]["action"] == "unchanged"
            assert json.loads((state_dir / "state.json").read_text())["state"] == "RUNNING"
    finally:
        subprocess.run(["umount", "-l", str(state_dir)], check=False)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


# --- the Docker engine stopped mid-boot


def test_engine_stopped_mid_boot_and_started_again(fresh, standin_images, tmp_path):
    ctx = context(tmp_path, standin_images["ok"])
    started = time.monotonic()
    proc = start_boot(fresh, tmp_path / "root", ctx, "--stability-window", "3")
    try:
        _wait_for(lambda: running_ids(fresh), 60)
        fresh.stop()  # SIGTERM, during the stability window; still down when it ends
        time.sleep(4)
    finally:
        fresh.start()
    code, record, err = finish(proc)
    assert time.monotonic() - started < 120
    assert code == 0, (record, err[-2000:])
    assert "docker engine went away" in err  # the boot saw it, waited, converged again
    assert record["state"] == "RUNNING"
    assert running_ids(fresh) == [record["container"]["container_id"][:12]]


def test_engine_down_when_the_boot_starts(fresh, standin_images, tmp_path):
    ctx = context(tmp_path, standin_images["ok"])
    fresh.stop()
    try:
        proc = start_boot(fresh, tmp_path / "root", ctx)
        time.sleep(2)
    finally:
        fresh.start()
    code, record, err = finish(proc)
    assert code == 0, (record, err[-2000:])
    assert "waiting for the docker engine" in err
    assert record["container"]["action"] == "created"


def _wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- OneGate answering 500, then 401


def puts(onegate: OneGateEmulator, status: int = 200) -> list[dict[str, str]]:
    out = []
    for request in onegate.requests:
        if (
            request.method == "PUT"
            and request.params.get("type") == "1"
            and (request.status == status)
        ):
            out.append(dict(line.split("=", 1) for line in request.data_lines))
    return out


def test_onegate_500_for_a_while_delays_nothing_and_loses_nothing(fresh, standin_images, tmp_path):
    """500 until the test says stop (the minute of the issue, without waiting a minute): the
    boot ends RUNNING in bounded time with the reports queued; the next run delivers them, as
    one merged report."""
    root = tmp_path / "root"
    with OneGateEmulator() as onegate:
        onegate.add_vm(VMID, token=TOKEN)
        onegate.set_faults(fail_next=10**9)
        ctx = context(tmp_path, standin_images["ok"], onegate)
        started = time.monotonic()
        code, record, _ = boot(fresh, root, ctx)
        elapsed = time.monotonic() - started
        assert code == 0 and record["state"] == "RUNNING", record
        assert elapsed < 30, f"the boot waited {elapsed:.1f} s on OneGate"
        # it did try, then backed off (full jitter from 2 s, shared by the boot's reports)
        assert len(onegate.requests) >= 2
        assert "FL_STATE" not in onegate.user_template(VMID)
        queued = sorted((root / "var/lib/fl-agent/onegate-queue").glob("*.json"))
        assert queued, "undelivered reports must wait on disk"
        assert all(TOKEN not in p.read_text() for p in queued)

        onegate.clear_faults()
        code, _, _ = boot(fresh, root, ctx, "--periodic")
        assert code == 0
        held = onegate.user_template(VMID)
        assert held["FL_STATE"] == "RUNNING" and held["READY"] == "YES"
        states = [p["FL_STATE"] for p in puts(onegate) if "FL_STATE" in p]
        assert states == ["RUNNING"]  # the queued reports and the outcome, merged into one
        assert held["FL_AGENT_VERSION"]  # BOOTING's facts went out with it
        assert not list((root / "var/lib/fl-agent/onegate-queue").glob("*.json"))


def test_onegate_401_fails_fast_and_the_node_still_runs(fresh, standin_images, tmp_path):
    with OneGateEmulator() as onegate:
        onegate.add_vm(VMID, token=TOKEN)
        onegate.set_faults(unauthorized=True)
        ctx = context(tmp_path, standin_images["ok"], onegate)
        started = time.monotonic()
        code, record, err = boot(fresh, tmp_path / "root", ctx)
        elapsed = time.monotonic() - started
        assert code == 0 and record["state"] == "RUNNING", record
        assert elapsed < 20, f"401 is not worth retrying, yet the boot took {elapsed:.1f} s"
        assert "onegate_unauthorized" in err
        assert all(r.status == 401 for r in onegate.requests)
        assert len(onegate.requests) <= 12  # no retry storm: about one request per report
        assert "FL_STATE" not in onegate.user_template(VMID)
        assert running_ids(fresh)
