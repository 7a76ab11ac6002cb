"""The appliance: service report and motd (pure), and the image booted with systemd (docker).

The boot test builds the CI image with Packer's `docker` source (the same provisioning scripts
as the OpenNebula image; cached by a hash of its inputs), boots it with systemd as PID 1 and the
host's Docker engine behind the mounted socket, and plays one-context's part: a stand-in
one-context.service copies the context where one-contextd leaves it and runs the network-stage
scripts, and a reconfigure runs them again with `reconfigure`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent import appliance
from agent.context import render_context
from agent.paths import Root

REPO = Path(__file__).resolve().parent.parent
IMAGE_REPOSITORY = "fl-agent-test/appliance"
BUILD_INPUTS = ("packer", "systemd", "context.d", "udev", "agent", "pyproject.toml")
BUILD_SKIP = {".stage", "output", "__pycache__"}
VM_LABEL = "fl-agent-test.appliance-vm"

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


# --- the image built by the Packer `docker` source, booted with systemd as PID 1 ---


def _content_hash() -> str:
    """A hash of everything that goes into the image: a rerun with no change reuses it."""
    digest = hashlib.sha256()
    for top in BUILD_INPUTS:
        path = REPO / top
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in files:
            rel = file.relative_to(REPO)
            if not file.is_file() or BUILD_SKIP & set(rel.parts) or file.suffix == ".pyc":
                continue
            digest.update(f"{rel}\0{file.stat().st_mode & 0o111}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _packer_build(tag: str, workdir: Path) -> None:
    """`packer build -only=docker.appliance` on a copy without the plugins block (Packer 1.6.6)."""
    copy = workdir / "packer"
    shutil.copytree(
        REPO / "packer", copy, ignore=shutil.ignore_patterns("plugins.pkr.hcl", *BUILD_SKIP)
    )
    repository, version = tag.split(":")
    variables = {
        "repo_dir": str(REPO),
        "python": sys.executable,
        "nvidia_toolkit": "none",
        "docker_repository": repository,
        "docker_tag": version,
    }
    cert = os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")
    if Path(cert).is_file():
        variables["pip_cert"] = cert
    argv = ["packer", "build", "-only=docker.appliance"]
    for key, value in variables.items():
        argv += ["-var", f"{key}={value}"]
    result = subprocess.run([*argv, "."], cwd=copy, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.fixture(scope="session")
def appliance_image(docker_client, tmp_path_factory) -> str:
    """The CI appliance image; built once per content hash, older builds removed."""
    from docker.errors import ImageNotFound

    tag = f"{IMAGE_REPOSITORY}:{_content_hash()}"
    with open("/tmp/fl-agent-test-appliance.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            docker_client.images.get(tag)
        except ImageNotFound:
            _packer_build(tag, tmp_path_factory.mktemp("appliance-build"))
            for image in docker_client.images.list(name=IMAGE_REPOSITORY):
                if tag not in image.tags:
                    with contextlib.suppress(Exception):
                        docker_client.images.remove(image.id)
    return tag


ONE_CONTEXTD = """\
#!/bin/sh
# one-contextd stand-in: leaves the context where one-contextd does, then runs the
# network-stage scripts with the stage and the command, in byte order, like one-contextd.
set -eu
stage=$1
command=${2:-}
[ -n "$command" ] || sleep 2
install -d -m 0700 /var/run/one-context
install -m 0400 /context/context.sh "/var/run/one-context/context.sh.$stage"
umask 077
printf 'export TOKENTXT="%s"\\n' "$(cat /context/token.txt)" >/var/run/one-context/one_env
for script in $(find /etc/one-context.d -maxdepth 1 -type f -name 'net-*' | LC_ALL=C sort); do
    "$script" "$stage" "$command"
done
"""

ONE_CONTEXT_SERVICE = """\
[Unit]
Description=one-context stand-in (fl-agent test): the network stage
After=multi-user.target
ConditionPathExists=!/var/run/one-context/context.sh.network

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /opt/one-standin/one-contextd network
"""


class ApplianceVM:
    """The booted image: systemd as PID 1, the host's engine, a context 'CD' at /context."""

    def __init__(self, image: str, workdir: Path, data_dir: Path, network: str = "host") -> None:
        self.name = f"fl-agent-test-vm-{uuid.uuid4().hex[:10]}"
        self.network = network
        self.context_dir = workdir / "context"
        standin = workdir / "one-standin"
        for directory in (self.context_dir, standin, data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        (standin / "one-contextd").write_text(ONE_CONTEXTD)
        (standin / "one-context.service").write_text(ONE_CONTEXT_SERVICE)
        self.image = image
        self.mounts = [
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            # The engine is the host's: the image's own docker.service/containerd stay masked.
            "/dev/null:/etc/systemd/system/docker.service",
            "/dev/null:/etc/systemd/system/docker.socket",
            "/dev/null:/etc/systemd/system/containerd.service",
            "/var/run/docker.sock:/run/docker.sock",
            f"{self.context_dir}:/context:ro",
            f"{standin}:/opt/one-standin:ro",
            f"{standin / 'one-context.service'}:/etc/systemd/system/one-context.service:ro",
            f"{data_dir}:{data_dir}",
        ]
        if network == "host":  # the image's firewall would be the host's: off
            self.mounts.append("/dev/null:/etc/fl-agent/firewall.disabled:ro")

    def write_context(self, variables: dict[str, str], token: str) -> None:
        """Replace the context atomically, like oned regenerating the CD."""
        tmp = self.context_dir / ".context.sh.tmp"
        tmp.write_text(render_context(variables))
        tmp.replace(self.context_dir / "context.sh")
        (self.context_dir / "token.txt").write_text(token + "\n")

    def boot(self) -> None:
        argv = [
            "docker",
            "run",
            "-d",
            "--name",
            self.name,
            "--label",
            VM_LABEL,
            "--network",
            self.network,
        ]
        for cap in ("SYS_ADMIN", "NET_ADMIN", "MKNOD"):
            argv += ["--cap-add", cap]
        argv += ["--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined"]
        argv += ["--tmpfs", "/run", "--tmpfs", "/run/lock"]
        for mount in self.mounts:
            argv += ["-v", mount]
        subprocess.run([*argv, self.image], check=True, capture_output=True, timeout=60)

    def reboot(self) -> None:
        """Power off and boot again: /run is a fresh tmpfs, every unit runs again."""
        self.sh("systemctl", "poweroff", check=False)
        subprocess.run(["docker", "wait", self.name], check=True, capture_output=True, timeout=120)
        subprocess.run(["docker", "start", self.name], check=True, capture_output=True, timeout=60)

    def sh(
        self, *argv: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["docker", "exec", self.name, *argv], capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}{self.journal()}"
        return result

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        argv = ["systemctl", "show", unit, *(f"--property={p}" for p in properties)]
        out = self.sh(*argv).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def settle(self, unit: str, timeout_s: float = 180) -> dict[str, str]:
        """Wait until `unit` ran to its end (active or failed); its properties then."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            probe = self.sh("systemctl", "show", unit, "--property=ActiveState", check=False)
            if probe.stdout.strip() in ("ActiveState=active", "ActiveState=failed"):
                return self.show(
                    unit,
                    "ActiveState",
                    "Result",
                    "ExecMainStatus",
                    "ExecMainStartTimestampMonotonic",
                    "ExecMainExitTimestampMonotonic",
                    "After",
                )
            time.sleep(0.5)
        raise AssertionError(f"{unit} did not settle in {timeout_s}s{self.journal()}")

    def read(self, path: str) -> str:
        return self.sh("cat", path).stdout

    def journal(self) -> str:
        out = subprocess.run(
            [
                "docker",
                "exec",
                self.name,
                "journalctl",
                "--no-pager",
                "-n",
                "60",
                "-u",
                "fl-agent",
                "-u",
                "one-context",
                "-u",
                "fl-agent-revalidate",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return "\n--- journal ---\n" + out.stdout[-6000:]

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)


@pytest.fixture
def onegate():
    from emulators.onegate import OneGateEmulator

    with OneGateEmulator("127.0.0.1", 0) as emulator:
        yield emulator


@pytest.fixture
def superlink():
    """A listening port where the SuperLink is (the stand-in SuperNode only needs the address)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


@pytest.fixture
def vm_factory(appliance_image, tmp_path):
    vms: list[ApplianceVM] = []

    def make(name: str, network: str = "host") -> ApplianceVM:
        vm = ApplianceVM(appliance_image, tmp_path / name, tmp_path / name / "data", network)
        vms.append(vm)
        return vm

    yield make
    for vm in vms:
        vm.remove()


def context_vars(onegate, vm_id: int, superlink_port: int, image: str, data_dir: Path, **extra):
    return {
        "TOKEN": "YES",
        "REPORT_READY": "YES",
        "ONEGATE_ENDPOINT": onegate.endpoint,
        "VMID": str(vm_id),
        "FL_SUPERLINK_ADDRESS": f"127.0.0.1:{superlink_port}",
        "FL_TLS_ENABLED": "NO",
        "FL_NODE_CONFIG": "partition-id=0 num-partitions=1",
        "FL_GPU_ENABLED": "AUTO",
        "FL_SUPERNODE_IMAGE": image,
        "FL_DATA_DIR": str(data_dir),
        **extra,
    }


def supernode(docker_client):
    return docker_client.containers.get(appliance.CONTAINER_NAME)


def assert_marketplace_checks(vm: ApplianceVM, docker_client) -> None:
    """What the community marketplace certifies on a SuperNode appliance."""
    assert vm.sh("systemctl", "is-active", "fl-agent.service").stdout.strip() == "active"
    # Docker: enabled in the image; here the engine answering is the host's, through the socket.
    vm.sh("test", "-L", "/etc/systemd/system/multi-user.target.wants/docker.service")
    assert vm.sh("docker", "info", "--format", "{{.ServerVersion}}").stdout.strip()
    node = supernode(docker_client)
    assert node.status == "running"
    mode = vm.sh("stat", "-c", "%a", appliance.SERVICE_REPORT).stdout.strip()
    assert mode == "600"
    report = vm.read(appliance.SERVICE_REPORT)
    version = vm.read("/etc/fl-agent/flower-version").strip()
    assert "state          = RUNNING" in report
    assert f"container id   = {node.id[:12]}" in report
    assert f"flower version = {version}" in report
    assert "mode           = CPU" in report and "why            = no NVIDIA GPU" in report
    assert appliance.READY_MARKER in vm.read(appliance.MOTD)


@pytest.mark.docker
def test_appliance_boots_converges_on_reconfigure_and_passes_marketplace_checks(
    vm_factory, onegate, superlink, standin_images, docker_client, no_supernode
):
    vm = vm_factory("node")
    vm_id, token = 41, secrets.token_urlsafe(16)
    onegate.add_vm(vm_id, token=token)
    data_dir = vm.context_dir.parent / "data"
    port = superlink.getsockname()[1]
    variables = context_vars(onegate, vm_id, port, standin_images["ok"], data_dir)
    vm.write_context(variables, token)
    vm.boot()

    # The unit ran by itself, after one-context's network stage and the network.
    agent = vm.settle("fl-agent.service")
    assert (agent["ActiveState"], agent["Result"]) == ("active", "success"), vm.journal()
    context = vm.show("one-context.service", "ActiveState", "ExecMainExitTimestampMonotonic")
    network = vm.show("network-online.target", "ActiveEnterTimestampMonotonic")
    started = int(agent["ExecMainStartTimestampMonotonic"])
    assert context["ActiveState"] == "active"
    assert 0 < int(context["ExecMainExitTimestampMonotonic"]) <= started
    assert 0 < int(network["ActiveEnterTimestampMonotonic"]) <= started
    assert {"docker.service", "one-context.service"} <= set(agent["After"].split())
    units = ("fl-agent.service", "fl-agent-revalidate.service", "fl-agent-revalidate.timer")
    verify = vm.sh("systemd-analyze", "verify", *units)
    assert verify.stdout + verify.stderr == ""
    assert vm.sh("systemctl", "is-enabled", units[0], units[2]).stdout.split() == ["enabled"] * 2

    # The SuperNode runs on the (host's) engine; OneGate holds READY=YES.
    node = supernode(docker_client)
    assert node.status == "running" and standin_images["ok"] in node.image.tags
    template = onegate.user_template(vm_id)
    assert template["READY"] == "YES" and template["FL_STATE"] == "RUNNING"
    assert_marketplace_checks(vm, docker_client)

    # A second boot (the VM reboots; the context is the same) changes nothing.
    vm.reboot()
    agent = vm.settle("fl-agent.service")
    assert agent["Result"] == "success" and int(agent["ExecMainStartTimestampMonotonic"]) > started
    started = int(agent["ExecMainStartTimestampMonotonic"])
    state = json.loads(vm.read("/var/lib/fl-agent/state.json"))
    assert state["container"]["action"] == "unchanged"
    assert supernode(docker_client).id == node.id
    assert onegate.user_template(vm_id)["READY"] == "YES"

    # The SuperLink goes away: the node keeps running (it retries), the periodic re-validation
    # leaves it alone.
    superlink.close()
    vm.sh("systemctl", "start", "fl-agent-revalidate.service")
    assert supernode(docker_client).id == node.id
    assert_marketplace_checks(vm, docker_client)

    # A context change through the hook (onevm updateconf): the container gets the new spec.
    vm.write_context({**variables, "FL_LOG_LEVEL": "DEBUG"}, token)
    vm.sh("/bin/sh", "/opt/one-standin/one-contextd", "network", "reconfigure")
    agent = vm.settle("fl-agent.service")
    assert (agent["ActiveState"], agent["Result"]) == ("active", "success"), vm.journal()
    assert int(agent["ExecMainStartTimestampMonotonic"]) > started
    replaced = supernode(docker_client)
    assert replaced.id != node.id and replaced.status == "running"
    assert "FLWR_LOG_LEVEL=DEBUG" in replaced.attrs["Config"]["Env"]
    assert json.loads(vm.read("/var/lib/fl-agent/state.json"))["container"]["action"] == "replaced"
    assert onegate.user_template(vm_id)["READY"] == "YES"


@pytest.mark.docker
def test_broken_context_fails_the_unit_reports_failed_and_starts_nothing(
    vm_factory, onegate, superlink, standin_images, docker_client, no_supernode
):
    from docker.errors import NotFound

    vm = vm_factory("broken")
    vm_id, token = 42, secrets.token_urlsafe(16)
    onegate.add_vm(vm_id, token=token)
    data_dir = vm.context_dir.parent / "data"
    port = superlink.getsockname()[1]
    variables = context_vars(
        onegate, vm_id, port, standin_images["ok"], data_dir, FL_GPU_ENABLED="MAYBE"
    )
    vm.write_context(variables, token)
    vm.boot()

    agent = vm.settle("fl-agent.service")
    assert (agent["ActiveState"], agent["Result"]) == ("failed", "exit-code"), vm.journal()
    assert agent["ExecMainStatus"] == "2"  # invalid configuration, not the start timeout
    elapsed_s = (
        int(agent["ExecMainExitTimestampMonotonic"]) - int(agent["ExecMainStartTimestampMonotonic"])
    ) / 1e6
    assert elapsed_s < 60
    template = onegate.user_template(vm_id)
    assert template["FL_STATE"] == "FAILED" and "READY" not in template
    # READY is the agent's: the image's net-99-report-ready never reports it on its own.
    vm.sh("grep", "-q", "READY belongs to the agent", "/etc/one-context.d/net-99-report-ready")
    with pytest.raises(NotFound):
        supernode(docker_client)
    assert appliance.READY_MARKER not in vm.read(appliance.MOTD)
    assert "state          = FAILED" in vm.read(appliance.SERVICE_REPORT)
    # The image keeps the NVIDIA /dev/char links (udev) and carries the watch unit.
    rule = vm.read("/usr/lib/udev/rules.d/71-fl-agent-dev-char.rules")
    assert "fl-agent dev-char-links" in rule
    verify = vm.sh("systemd-analyze", "verify", "fl-agent-watch.service")
    assert verify.stdout + verify.stderr == ""


@pytest.mark.docker
def test_marketplace_checks_with_the_real_supernode_and_no_superlink(
    vm_factory, onegate, docker_client, no_supernode
):
    """The image's default: the baked Flower version's SuperNode image, whose SuperLink is down.

    flower-supernode keeps retrying its SuperLink; the node is RUNNING and certifiable.
    """
    from agent import flower

    version = flower.DEFAULT_FLOWER_VERSION
    subprocess.run(
        ["bash", str(REPO / "images/build-supernode.sh"), version], check=True, timeout=1200
    )
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed_port = probe.getsockname()[1]
    vm = vm_factory("real")
    vm_id, token = 43, secrets.token_urlsafe(16)
    onegate.add_vm(vm_id, token=token)
    variables = context_vars(onegate, vm_id, closed_port, "", vm.context_dir.parent / "data")
    variables.pop("FL_SUPERNODE_IMAGE")
    vm.write_context(variables, token)
    vm.boot()

    agent = vm.settle("fl-agent.service")
    assert (agent["ActiveState"], agent["Result"]) == ("active", "success"), vm.journal()
    assert vm.read("/etc/fl-agent/flower-version").strip() == version
    node = supernode(docker_client)
    assert f"fl-agent/supernode:{version}" in node.image.tags
    time.sleep(10)  # well past the agent's stability window: still up, never restarted
    node.reload()
    assert node.status == "running" and node.attrs["RestartCount"] == 0
    assert f"127.0.0.1:{closed_port}" in node.attrs["Args"]
    assert b"Connection attempt failed, retrying" in node.logs()
    assert_marketplace_checks(vm, docker_client)
    assert f"image          = fl-agent/supernode:{version}" in vm.read(appliance.SERVICE_REPORT)


def _connects(host: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


LISTEN = (
    "import socket, sys, time\n"
    "servers = [socket.create_server(('0.0.0.0', int(p))) for p in sys.argv[1:]]\n"
    "time.sleep(600)\n"
)
SMTP = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], 25), timeout=3)\n"
    "except ConnectionRefusedError:\n"
    "    print('refused')\n"
)


@pytest.mark.docker
def test_firewall_in_the_booted_image_denies_inbound_keeps_ssh_and_blocks_smtp(vm_factory):
    """The image on a network namespace of its own (a host-network VM disables its firewall)."""
    vm = vm_factory("firewall", network="bridge")
    vm.write_context({"FL_GPU_ENABLED": "MAYBE"}, "token")  # the agent exits 2, touches nothing
    vm.boot()
    unit = vm.settle("fl-agent-firewall.service", timeout_s=60)
    assert (unit["ActiveState"], unit["Result"]) == ("active", "success"), vm.journal()
    assert vm.sh("systemctl", "is-enabled", "fl-agent-firewall.service").stdout.strip() == "enabled"
    table = vm.sh("nft", "list", "table", "inet", "fl_agent").stdout
    assert "policy drop" in table and "tcp dport @inbound_tcp accept" in table
    assert "elements = { 22 }" in table and "tcp dport 25" in table
    verify = vm.sh("systemd-analyze", "verify", "fl-agent-firewall.service")
    assert verify.stdout + verify.stderr == ""

    inspect = ["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", vm.name]
    address = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()
    gateway = vm.sh("sh", "-c", "ip route | awk '/default/ {print $3}'").stdout.strip()
    listener = ["docker", "exec", "-d", vm.name, "python3", "-c", LISTEN, "22", "8080", "9092"]
    subprocess.run(listener, check=True, timeout=30)
    deadline = time.monotonic() + 20
    while not _connects(address, 22) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _connects(address, 22), "SSH is open"
    assert not _connects(address, 8080) and not _connects(address, 9092), "the rest is denied"
    vm.sh("python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8080))")

    # Outbound SMTP is refused by the table (its counter moves), whoever answers on port 25.
    assert vm.sh("python3", "-c", SMTP, gateway).stdout.strip() == "refused"
    output = vm.sh("nft", "list", "chain", "inet", "fl_agent", "output").stdout
    assert "counter packets 0 " not in output, output

    # Another table (Docker's iptables-nft chains) survives a reload and a stop of ours; a
    # drop-in opens the SuperLink's Fleet API port.
    vm.sh("iptables", "-t", "nat", "-N", "DOCKER")
    drop_in = "add element inet fl_agent inbound_tcp { 9092 }\n"
    vm.sh("sh", "-c", f"printf '{drop_in}' >/etc/fl-agent/firewall.d/superlink.nft")
    vm.sh("systemctl", "reload", "fl-agent-firewall.service")
    assert _connects(address, 9092) and not _connects(address, 8080)
    vm.sh("systemctl", "stop", "fl-agent-firewall.service")
    assert "fl_agent" not in vm.sh("nft", "list", "tables").stdout
    assert "-N DOCKER" in vm.sh("iptables", "-t", "nat", "-S").stdout
    assert _connects(address, 8080)
