"""The toolkit: detection on fixture trees, and the real install path into throwaway roots.

Packages are installed for real (dpkg, apt) from a locally built, signed repository into a
tmp root; the test runner refuses any package command not pointed at that root, and records
`systemctl` instead of running it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from agent import toolkit
from agent.config import Config
from agent.paths import Root
from tests.toolkit_repo import ToolkitRepo, build_repo, stop_gpg_agents

OTHER_KEYS = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "runtimes": {"crun": {"path": "/usr/bin/crun"}},
    "storage-driver": "overlay2",
}
AUTO = Config()
NEVER = Config(toolkit_install="NEVER")


@pytest.fixture(scope="session")
def repo(tmp_path_factory) -> ToolkitRepo:
    workdir = tmp_path_factory.mktemp("toolkit-repo")
    try:
        yield build_repo(workdir)
    finally:
        stop_gpg_agents(workdir)


class GuardedRunner:
    """Runs package commands for real, but only when they point at the throwaway root."""

    def __init__(self, root: Root, systemctl_rc: int = 0) -> None:
        self.root = root
        self.systemctl_rc = systemctl_rc
        self.calls: list[list[str]] = []

    def __call__(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
    ) -> toolkit.RunResult:
        argv = list(argv)
        self.calls.append(argv)
        prefix = str(self.root.prefix)
        if argv[0] == "systemctl":
            return toolkit.RunResult(self.systemctl_rc, "")
        if argv[0] == "dpkg":
            assert f"--root={prefix}" in argv
        elif argv[0] in ("apt-get", "apt-mark"):
            assert env and env["APT_CONFIG"].startswith(prefix)
        else:
            assert argv[0].startswith(prefix), argv
        return toolkit.run_command(argv, timeout=timeout, env=env)

    def commands(self) -> list[str]:
        return [Path(c[0]).name for c in self.calls]


@pytest.fixture
def root(tmp_path) -> Root:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").touch()
    return Root(tmp_path)


def bake(root: Root, repo: ToolkitRepo) -> None:
    baked = root.path(toolkit.BAKED_DIR)
    baked.mkdir(parents=True)
    for deb in repo.debs:
        shutil.copy(deb, baked)


def ship_keyring(root: Root, keyring: Path) -> None:
    target = root.path(toolkit.KEYRING)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(keyring, target)


def write_daemon(root: Root, content: str | dict) -> Path:
    path = root.docker_daemon_json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def ctk_shape(data: dict) -> str:
    return json.dumps(data, indent=4, sort_keys=True)


# --- detect ---


def test_detect_on_an_empty_root(root):
    facts = toolkit.detect(root)
    assert not facts.installed and facts.mode is None and facts.packages == {}
    assert [p.name for p in facts.problems] == ["toolkit_missing"]
    assert "nvidia-ctk and nvidia-container-runtime-hook" in facts.problems[0].message


def executable(root: Root, path: str) -> None:
    target = root.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("#!/bin/sh\n")
    target.chmod(0o755)


class FakeEngine:
    """The engine's /info and /_ping as the validation sees them (a restart cannot be real here)."""

    def __init__(self, runtimes: tuple[str, ...]) -> None:
        self.runtimes = runtimes

    def info(self) -> dict:
        return {"Runtimes": {name: {"path": name} for name in self.runtimes}}

    def ping(self) -> bool:
        return True


def test_detect_reads_every_source(root):
    executable(root, "/usr/bin/nvidia-ctk")
    executable(root, "/usr/bin/nvidia-container-runtime-hook")
    root.path(toolkit.DPKG_STATUS).write_text(
        "Package: nvidia-container-toolkit\nStatus: install ok installed\nVersion: 1.17.8-1\n"
        "Description: x\n continued\n\n"
        "Package: libnvidia-container1\nStatus: deinstall ok config-files\nVersion: 1.0\n\n"
        "Package: bash\nStatus: install ok installed\nVersion: 5.2\n"
    )
    write_daemon(root, {"default-runtime": "runc", "runtimes": {"nvidia": {"path": "/x/ncr"}}})
    config = root.path(toolkit.RUNTIME_CONFIG)
    config.parent.mkdir(parents=True)
    config.write_text('[nvidia-container-runtime]\nmode = "legacy"\n')
    facts = toolkit.detect(root, FakeEngine(("nvidia", "runc")))
    assert facts.ctk_path == "/usr/bin/nvidia-ctk"
    assert facts.hook_path == "/usr/bin/nvidia-container-runtime-hook"
    assert facts.packages == {"nvidia-container-toolkit": "1.17.8-1"}
    assert (facts.daemon_runtime, facts.default_runtime) == ("/x/ncr", "runc")
    assert facts.engine_runtimes == ("nvidia", "runc")
    assert (facts.mode, facts.mode_configured) == ("legacy", "legacy")
    assert facts.ready and facts.problems == ()
    assert json.loads(json.dumps(facts.to_dict()))["ready"] is True


def dpkg_toolkit(root: Root, version: str) -> None:
    root.path(toolkit.DPKG_STATUS).write_text(
        f"Package: nvidia-container-toolkit\nStatus: install ok installed\nVersion: {version}\n"
    )


def test_the_runtime_mode_is_the_toolkits_resolution_per_version(root):
    executable(root, "/usr/bin/nvidia-ctk")
    executable(root, "/usr/bin/nvidia-container-runtime-hook")
    dpkg_toolkit(root, "1.17.8-1")
    assert toolkit.detect(root).mode == "legacy"  # no config.toml: auto
    dpkg_toolkit(root, "1.18.0-1")
    facts = toolkit.detect(root)
    assert (facts.mode, facts.to_dict()["hook_mode"]) == ("jit-cdi", "legacy")
    assert facts.ready  # --gpus runs the hook, which stays legacy
    config = root.path(toolkit.RUNTIME_CONFIG)
    config.parent.mkdir(parents=True)
    config.write_text("mode = [")
    assert [p.name for p in toolkit.detect(root).problems][-1] == "toolkit_config_invalid"


@pytest.mark.parametrize("mode", ["cdi", "jit-cdi", "csv"])
def test_a_mode_the_hook_refuses_is_not_configured(root, mode):
    executable(root, "/usr/bin/nvidia-ctk")
    executable(root, "/usr/bin/nvidia-container-runtime-hook")
    dpkg_toolkit(root, "1.18.0-1")
    config = root.path(toolkit.RUNTIME_CONFIG)
    config.parent.mkdir(parents=True)
    config.write_text(f'[nvidia-container-runtime]\nmode = "{mode}"\n')
    facts = toolkit.detect(root)
    assert facts.mode == mode and not facts.configured and not facts.ready
    assert [p.name for p in facts.problems] == ["toolkit_cdi_mode"]


def test_hook_is_looked_up_on_the_running_dockerds_path(root):
    executable(root, "/usr/bin/nvidia-ctk")
    executable(root, "/opt/nvidia/bin/nvidia-container-runtime-hook")
    assert toolkit.detect(root).hook_path is None
    proc = root.path("/proc/4242")
    proc.mkdir(parents=True)
    (proc / "comm").write_text("dockerd\n")
    (proc / "environ").write_bytes(b"HOME=/root\0PATH=/opt/nvidia/bin:/usr/bin\0")
    facts = toolkit.detect(root)
    assert facts.hook_path == "/opt/nvidia/bin/nvidia-container-runtime-hook"
    assert facts.search_path == ("/opt/nvidia/bin", "/usr/bin")


def test_a_dockerd_path_that_is_not_utf8_is_read_not_a_traceback(root):
    proc = root.path("/proc/4242")
    proc.mkdir(parents=True)
    (proc / "comm").write_text("dockerd\n")
    (proc / "environ").write_bytes(b"PATH=/usr/bin:/opt/\xff\0")
    assert toolkit.detect(root).search_path == ("/usr/bin", "/opt/\udcff")


def dockerd_started_at(root: Root, epoch: int) -> None:
    """A running dockerd under the root that started at `epoch` (btime + 0 ticks)."""
    proc = root.path("/proc/4242")
    proc.mkdir(parents=True)
    (proc / "comm").write_text("dockerd\n")
    (proc / "environ").write_bytes(b"PATH=/usr/bin\0")
    (proc / "stat").write_text("4242 (dockerd) S " + " ".join(["0"] * 19) + " 0\n")
    root.path("/proc/stat").write_text(f"cpu 1 2 3\nbtime {epoch}\n")


def test_daemon_json_without_the_nvidia_runtime_is_configured(root):
    """moby's --gpus needs the hook on dockerd's PATH, not runtimes.nvidia."""
    executable(root, "/usr/bin/nvidia-ctk")
    executable(root, "/usr/bin/nvidia-container-runtime-hook")
    write_daemon(root, {"log-driver": "journald"})
    facts = toolkit.detect(root, FakeEngine(("io.containerd.runc.v2", "runc")))
    assert facts.configured and facts.ready and facts.problems == ()


def test_engine_started_before_the_hook_means_restart_needed(root):
    executable(root, "/usr/bin/nvidia-ctk")
    executable(root, "/usr/bin/nvidia-container-runtime-hook")
    dockerd_started_at(root, 1000)  # long before the hook file appeared
    facts = toolkit.detect(root)
    assert [p.name for p in facts.problems] == ["docker_restart_needed"]
    assert "started before" in facts.problems[0].message and not facts.ready


@pytest.mark.docker
def test_detect_asks_the_real_engine(root, engine):
    facts = toolkit.detect(root, engine)
    assert "runc" in facts.engine_runtimes
    assert not any(p.name == "docker_unreachable" for p in facts.problems)


def test_an_unreachable_engine_is_a_problem(root):
    class Down:
        def info(self):
            raise ConnectionError("connection refused")

    facts = toolkit.detect(root, Down())
    assert "docker_unreachable" in [p.name for p in facts.problems]


# --- daemon.json on its own ---


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_configure_daemon_json_on_missing_or_blank(root, content):
    if content is not None:
        write_daemon(root, content)
    assert toolkit.configure_daemon_json(root) is None
    text = root.docker_daemon_json.read_text()
    assert (
        text
        == ctk_shape({"runtimes": {"nvidia": toolkit.merged_daemon_json({})["runtimes"]["nvidia"]}})
        + "\n"
    )


def test_configure_daemon_json_keeps_other_keys_and_backs_up(root):
    path = write_daemon(root, OTHER_KEYS)
    original = path.read_bytes()
    path.chmod(0o600)
    assert toolkit.configure_daemon_json(root) is None
    data = json.loads(path.read_text())
    assert {k: data[k] for k in OTHER_KEYS if k != "runtimes"} == {
        k: v for k, v in OTHER_KEYS.items() if k != "runtimes"
    }
    assert data["runtimes"]["crun"] == {"path": "/usr/bin/crun"}
    assert data["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert path.with_name("daemon.json.fl-agent.bak").read_bytes() == original
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("content", ['{"log-driver": ', "[1, 2]", "\xff garbage"])
def test_configure_daemon_json_never_replaces_an_invalid_file(root, content):
    path = write_daemon(root, content)
    original = path.read_bytes()
    problem = toolkit.configure_daemon_json(root)
    assert problem is not None and problem.name == "daemon_json_invalid"
    assert path.read_bytes() == original
    assert path.with_name("daemon.json.fl-agent.bak").read_bytes() == original


def test_daemon_json_check_catches_losses():
    merged = ctk_shape(toolkit.merged_daemon_json(OTHER_KEYS))
    assert toolkit.daemon_json_check(OTHER_KEYS, merged) is None
    assert "log-opts" in toolkit.daemon_json_check(OTHER_KEYS, json.dumps({"runtimes": {}}))
    half = merged[: len(merged) // 2]
    assert "not valid JSON" in toolkit.daemon_json_check(OTHER_KEYS, half)
    dropped = toolkit.merged_daemon_json({k: v for k, v in OTHER_KEYS.items() if k != "runtimes"})
    assert "crun" in toolkit.daemon_json_check(OTHER_KEYS, json.dumps(dropped))
    assert "nvidia" in toolkit.daemon_json_check({}, json.dumps({"runtimes": {}}))


# --- ensure: the install path into a throwaway root ---


def assert_installed(root: Root, result: toolkit.ToolkitResult) -> None:
    assert result.action == "installed", result
    assert result.problem is None and result.facts.ready
    assert result.facts.packages == {
        "nvidia-container-toolkit": "1.17.8-1",
        "nvidia-container-toolkit-base": "1.17.8-1",
    }
    assert root.path("/usr/bin/nvidia-container-runtime-hook").is_file()
    assert result.facts.mode == "legacy"


def assert_held(root: Root) -> None:
    """Every toolkit package the agent installed is held in the root's dpkg database (an
    unattended upgrade would swap it under a running node)."""
    stanzas = root.path(toolkit.DPKG_STATUS).read_text().split("\n\n")
    held = {
        line.split(": ", 1)[1]
        for stanza in stanzas
        if "Status: hold ok installed" in stanza
        for line in stanza.splitlines()
        if line.startswith("Package: ")
    }
    assert held == set(toolkit.installed_packages(root, toolkit.TOOLKIT_PACKAGES))
    assert held >= {"nvidia-container-toolkit", "nvidia-container-toolkit-base"}


def test_offline_from_baked_packages(root, repo):
    bake(root, repo)
    path = write_daemon(root, OTHER_KEYS)
    original = path.read_bytes()
    runner = GuardedRunner(root)
    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=runner)
    assert_installed(root, result)
    assert runner.commands() == ["dpkg", "apt-mark", "nvidia-ctk", "systemctl"]
    assert runner.calls[-1] == ["systemctl", "restart", "docker"]
    assert_held(root)
    # nvidia-ctk's own output: whole file rewritten, sorted, 4-space indent, keys kept
    assert path.read_text() == ctk_shape(toolkit.merged_daemon_json(OTHER_KEYS))
    assert path.with_name("daemon.json.fl-agent.bak").read_bytes() == original
    assert result.duration_ms >= 0 and json.dumps(result.to_dict())


def test_second_run_does_nothing(root, repo):
    bake(root, repo)
    toolkit.ensure(AUTO, root, gpu_present=True, runner=GuardedRunner(root))
    again = GuardedRunner(root)
    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=again)
    assert result.action == "present" and result.problem is None
    assert again.calls == []


def test_from_the_signed_apt_repository(root, repo):
    ship_keyring(root, repo.keyring)
    runner = GuardedRunner(root)
    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=runner, repo_url=repo.url)
    assert_installed(root, result)
    assert runner.commands() == ["apt-get", "apt-get", "apt-mark", "nvidia-ctk", "systemctl"]
    assert_held(root)
    source = root.path(toolkit.SOURCE_LIST).read_text()
    assert source == f"deb [signed-by={root.path(toolkit.KEYRING)}] {repo.url} /\n"
    # nothing was missing in daemon.json: nvidia-ctk created it
    assert json.loads(root.docker_daemon_json.read_text())["runtimes"]["nvidia"]["path"]


def test_a_repository_signed_by_another_key_is_refused(root, repo):
    ship_keyring(root, repo.other_keyring)
    result = toolkit.ensure(
        AUTO, root, gpu_present=True, runner=GuardedRunner(root), repo_url=repo.url
    )
    assert result.action == "failed"
    assert result.problem.name == "toolkit_install_failed"
    assert "NO_PUBKEY" in result.problem.message or "not signed" in result.problem.message
    assert not root.path("/usr/bin/nvidia-ctk").exists()


def test_offline_without_a_reachable_repository(root):
    ship_keyring(root, Path(__file__))  # any file: apt never gets far enough to check it
    url = "http://127.0.0.1:9/libnvidia-container/stable/deb/$(ARCH)"
    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=GuardedRunner(root), repo_url=url)
    assert result.action == "failed"
    assert result.problem.name == "toolkit_offline"
    assert "127.0.0.1:9" in result.problem.message and result.problem.fix
    assert not result.facts.installed


def test_no_packages_and_no_keyring(root):
    runner = GuardedRunner(root)
    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=runner)
    assert (result.action, result.problem.name) == ("failed", "toolkit_no_source")
    assert runner.calls == []


def test_never_changes_nothing(root, repo):
    bake(root, repo)
    runner = GuardedRunner(root)
    result = toolkit.ensure(NEVER, root, gpu_present=True, runner=runner)
    assert (result.action, result.problem.name) == ("skipped", "toolkit_missing")
    assert runner.calls == [] and not root.docker_daemon_json.exists()


def test_no_gpu_needs_no_toolkit(root, repo):
    bake(root, repo)
    runner = GuardedRunner(root)
    result = toolkit.ensure(AUTO, root, gpu_present=False, runner=runner)
    assert (result.action, result.problem) == ("skipped", None)
    assert runner.calls == []


def test_empty_daemon_json_is_configured_by_the_agent(root, repo):
    bake(root, repo)
    write_daemon(root, "")
    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=GuardedRunner(root))
    assert_installed(root, result)
    assert any("restored" in step for step in result.steps)  # nvidia-ctk failed on EOF
    assert json.loads(root.docker_daemon_json.read_text()) == toolkit.merged_daemon_json({})


def test_invalid_daemon_json_is_left_alone_and_reported(root, repo):
    bake(root, repo)
    path = write_daemon(root, '{"log-driver": "json-file",')
    runner = GuardedRunner(root)
    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=runner)
    assert (result.action, result.problem.name) == ("failed", "daemon_json_invalid")
    assert path.read_text() == '{"log-driver": "json-file",'
    assert path.with_name("daemon.json.fl-agent.bak").read_text() == path.read_text()
    assert "systemctl" not in runner.commands()


def test_partial_write_by_nvidia_ctk_is_restored(root, repo, monkeypatch):
    bake(root, repo)
    path = write_daemon(root, OTHER_KEYS)
    original = path.read_bytes()
    monkeypatch.setenv("FAKE_NVIDIA_CTK", "partial")
    seen: list[str] = []

    class Watching(GuardedRunner):
        def __call__(self, argv, *, timeout, env=None):
            result = super().__call__(argv, timeout=timeout, env=env)
            if argv[0].endswith("nvidia-ctk"):
                seen.append(path.read_text())
            return result

    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=Watching(root))
    assert_installed(root, result)
    assert seen and toolkit.daemon_json_check(OTHER_KEYS, seen[0]) is not None  # it was broken
    assert any("restored" in step for step in result.steps)
    assert json.loads(path.read_text()) == toolkit.merged_daemon_json(OTHER_KEYS)
    assert path.with_name("daemon.json.fl-agent.bak").read_bytes() == original


def test_a_failed_restart_fails(root, repo):
    bake(root, repo)
    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=GuardedRunner(root, 1))
    assert (result.action, result.problem.name) == ("failed", "docker_restart_failed")


def test_restart_when_the_engine_started_before_the_hook(root, repo):
    bake(root, repo)
    toolkit.ensure(AUTO, root, gpu_present=True, runner=GuardedRunner(root))
    dockerd_started_at(root, 1000)

    class Restarting(GuardedRunner):
        def __call__(self, argv, *, timeout, env=None):
            if argv[0] == "systemctl":  # the new dockerd starts after the hook was installed
                root.path("/proc/stat").write_text(f"btime {int(time.time()) + 5}\n")
            return super().__call__(argv, timeout=timeout, env=env)

    runner = Restarting(root)
    result = toolkit.ensure(
        AUTO, root, gpu_present=True, engine=FakeEngine(("runc",)), runner=runner
    )
    assert runner.commands() == ["systemctl"]
    assert result.action == "present" and result.facts.ready


def test_waits_for_the_lock(root, repo):
    bake(root, repo)
    root.run_dir.mkdir(parents=True)
    with open(root.run_dir / "toolkit.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = toolkit.ensure(
            AUTO, root, gpu_present=True, runner=GuardedRunner(root), timeout_s=0.5
        )
    assert (result.action, result.problem.name) == ("failed", "toolkit_lock_timeout")
    assert not result.facts.installed


def test_two_agents_at_once_install_once(root, repo):
    import threading

    bake(root, repo)
    runner = GuardedRunner(root)
    results: list[toolkit.ToolkitResult] = []

    def agent() -> None:
        results.append(toolkit.ensure(AUTO, root, gpu_present=True, runner=runner))

    threads = [threading.Thread(target=agent) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(r.action for r in results) == ["installed", "present"]
    assert runner.commands().count("dpkg") == 1


def test_the_time_bound_is_kept(root, repo):
    bake(root, repo)
    runner = GuardedRunner(root)
    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=runner, timeout_s=0)
    assert (result.action, result.problem.name) == ("failed", "toolkit_timeout")
    assert runner.calls == []


def test_the_default_runner_kills_on_timeout():
    result = toolkit.run_command(["sh", "-c", "sleep 5 & sleep 5"], timeout=0.3)
    assert result.returncode == 124 and "timed out" in result.output
    assert toolkit.run_command(["/nonexistent/tool"], timeout=1).returncode == 127


def test_a_process_that_left_the_group_cannot_hold_the_runner(tmp_path):
    """`setsid cmd &` (a READY_SCRIPT the VM's owner writes) keeps the output pipe open after
    the group is killed: the runner still returns within its timeout and the drain bound."""
    pid_file = tmp_path / "pid"
    script = f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 60' & sleep 60"
    started = time.monotonic()
    result = toolkit.run_command(["sh", "-c", script], timeout=0.5)
    assert result.returncode == 124 and time.monotonic() - started < 10
    os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the escaped sleeper, ours to end


def test_the_default_runner_does_not_restart_the_machines_engine(root, repo):
    bake(root, repo)
    result = toolkit.ensure(AUTO, root, gpu_present=True)
    assert result.action == "installed"
    assert any("docker restart skipped" in step for step in result.steps)


# --- the production path: root "/" inside a container of the local Debian image ---

IN_CONTAINER = """
import json, shutil, subprocess, sys
from pathlib import Path
from agent import toolkit
from agent.config import Config
from agent.paths import Root

keyring, url = sys.argv[1], sys.argv[2]
Path(toolkit.KEYRING).parent.mkdir(parents=True, exist_ok=True)
shutil.copy(keyring, toolkit.KEYRING)
Path("/etc/docker").mkdir(parents=True, exist_ok=True)
Path("/etc/docker/daemon.json").write_text(json.dumps({"log-driver": "journald"}))
calls = []

def runner(argv, *, timeout, env=None):
    calls.append(list(argv))
    if argv[0] == "systemctl":
        return toolkit.RunResult(0, "")
    return toolkit.run_command(argv, timeout=timeout, env=env)

results = [
    toolkit.ensure(Config(), Root(), gpu_present=True, runner=runner, repo_url=url).to_dict()
    for _ in range(2)
]
query = ["dpkg-query", "-W", "-f=${Package} ${Version} ${Status}\\n", "nvidia-container-toolkit*"]
print(json.dumps({
    "results": results,
    "calls": calls,
    "dpkg": subprocess.run(query, capture_output=True, text=True).stdout,
    "daemon": Path("/etc/docker/daemon.json").read_text(),
}))
"""


@pytest.mark.docker
def test_installs_into_a_debian_system_at_root(docker_client, repo):
    """apt and dpkg on a real Debian 12 as the VM has it (root "/"), no network."""
    import uuid

    agent_dir = Path(__file__).resolve().parent.parent / "agent"
    workdir = repo.keyring.parent
    container = docker_client.containers.run(
        "fl-agent/debian:bookworm",
        ["python3", "-c", IN_CONTAINER, str(repo.keyring), repo.url],
        name=f"fl-agent-test-toolkit-{uuid.uuid4().hex[:8]}",
        labels={"fl-agent-test": "toolkit"},
        environment={"PYTHONPATH": "/src"},
        volumes={
            str(agent_dir): {"bind": "/src/agent", "mode": "ro"},
            str(workdir): {"bind": str(workdir), "mode": "ro"},
        },
        network_mode="none",
        detach=True,
    )
    try:
        status = container.wait(timeout=180)
        logs = container.logs(stdout=True, stderr=False).decode()
        assert status["StatusCode"] == 0, container.logs().decode()[-3000:]
    finally:
        container.remove(force=True)
    out = json.loads(logs.strip().splitlines()[-1])
    first, second = out["results"]
    assert first["action"] == "installed", first
    assert first["facts"]["ready"] and first["facts"]["mode"] == "legacy"
    assert second["action"] == "present" and second["steps"] == []
    assert [Path(c[0]).name for c in out["calls"]] == [
        "apt-get",
        "apt-get",
        "apt-mark",
        "nvidia-ctk",
        "systemctl",
    ]
    # held: an unattended upgrade cannot swap the toolkit under a running node
    assert "nvidia-container-toolkit 1.17.8-1 hold ok installed" in out["dpkg"]
    assert "nvidia-container-toolkit-base 1.17.8-1 hold ok installed" in out["dpkg"]
    assert out["daemon"] == ctk_shape(toolkit.merged_daemon_json({"log-driver": "journald"}))


def test_a_periodic_run_never_restarts_the_engine(root, repo):
    bake(root, repo)
    toolkit.ensure(AUTO, root, gpu_present=True, runner=GuardedRunner(root))
    dockerd_started_at(root, 1000)
    runner = GuardedRunner(root)
    result = toolkit.ensure(AUTO, root, gpu_present=True, runner=runner, restart_engine=False)
    assert runner.commands() == [] and result.action == "failed"
    assert result.problem.name == "docker_restart_needed"
    assert any("next boot" in step for step in result.steps)
