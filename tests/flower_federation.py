"""A real Flower federation on the Docker engine, built from the agent's own contract.

A SuperLink and SuperNodes of one release run in the image flwr/supernode:<version>, or
fl-agent/supernode:<version> where an app must train (images/build-supernode.sh), on a bridge
network of their own, with the CA and certificate from agent/tls.py, the node keys from
agent/nodeauth.py and the argv from agent/flower.py.
Every container and the network carry a per-run prefix and are removed by `close()`.

Used by tests/test_federation_docker.py and scripts/record_supernode_logs.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from agent import flower, nodeauth, tls

FLOWER_USER = (49999, 49999)
"""The flwr images' non-root user: it must read the keys mounted into its containers."""
SUPERLINK = "superlink"
REPO = Path(__file__).resolve().parent.parent
APP = REPO / "examples" / "app"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_flower_local():
    """scripts/flower_local.py (a script, not a package) as a module: the host venv's SuperLink
    and `flwr` CLI of a release."""
    spec = importlib.util.spec_from_file_location("flower_local", REPO / "scripts/flower_local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stop_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the process group a `start_new_session` child leads; SIGKILL when it lingers."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def docker(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


class Federation:
    """One SuperLink (TLS, SuperNode authentication on) and any number of SuperNodes."""

    def __init__(self, version: str, workdir: Path, repository: str = "flwr/supernode") -> None:
        self.version = version
        self.repository = repository
        self.workdir = workdir
        self.prefix = f"fl-agent-test-fed-{uuid.uuid4().hex[:8]}"
        self.network = self.prefix
        self.tls = tls.TlsFiles(workdir / "tls")
        docker("network", "create", self.network)

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def superlink_host(self) -> str:
        """The SuperLink's DNS name on the network, and a SAN of its certificate."""
        return self.name(SUPERLINK)

    def start_superlink(self, publish: tuple[str, ...] = ()) -> None:
        """`publish`: `docker run -p` values, for a SuperNode outside the network (one the agent
        runs on the host network dials 127.0.0.1, a SAN of the certificate)."""
        state = self.workdir / "state"
        state.mkdir(exist_ok=True)
        os.chown(state, *FLOWER_USER)
        tls.ensure_server_tls(
            self.tls, tls.wanted_sans((), self.superlink_host), key_owner=FLOWER_USER
        )
        cli = self.workdir / "cli"
        cli.mkdir(exist_ok=True)
        filename, text = flower.cli_connection(
            self.version, flower.control_endpoint(self.version, "127.0.0.1"), "/tls/ca.crt"
        )
        (cli / filename).write_text(text)
        app = self.workdir / "app"
        shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", ".flwr"))
        if filename == "pyproject.toml":  # 1.25: the app carries its federation
            with (app / "pyproject.toml").open("a") as out:
                out.write("\n" + text[text.index("[tool.flwr.federations]") :])
        paths = flower.ServerTlsPaths("/tls/ca.crt", "/tls/server.crt", "/tls/server.key")
        args = flower.superlink_args(
            version=self.version, tls=paths, state_dir="/state", node_auth=True
        )
        self._run(
            SUPERLINK,
            ["-v", f"{self.tls.directory}:/tls:ro", "-v", f"{state}:/state"],
            ["-v", f"{cli}:/cli:ro", "-v", f"{self.workdir / 'keys'}:/keys:ro"],
            ["-v", f"{app}:/app-src:ro", *(f"-p{p}" for p in publish)],
            ["--entrypoint", "flower-superlink", self.image, *args],
        )

    @property
    def image(self) -> str:
        return self.image_of(self.version)

    def image_of(self, version: str) -> str:
        return f"{self.repository}:{version}"

    def node_key(self, node: str) -> nodeauth.NodeKey:
        directory = self.workdir / "keys" / node
        key = nodeauth.ensure_node_key(directory, owner=FLOWER_USER)
        directory.chmod(0o755)
        return key

    def register(self, node: str) -> int | None:
        """`flwr supernode register` of the node's public key; the node id, or None."""
        self.node_key(node)
        argv = flower.register_node_args(self.version, f"/keys/{node}/node.pub", "/tmp/cli")
        return flower.registered_node_id(self._flwr(argv, "/tmp/cli").stdout)

    def unregister(self, node_id: int) -> str:
        """`flwr supernode unregister`; what it printed."""
        argv = flower.unregister_node_args(self.version, node_id, "/tmp/cli")
        return self._flwr(argv, "/tmp/cli").stdout

    def run_app(self) -> str:
        """`flwr run` of the reference app (examples/app) through the SuperLink's Control API:
        its streamed output once the run has finished."""
        try:
            done = self._flwr(["run", ".", flower.CLI_CONNECTION, "--stream"], "/tmp/app", 300)
        except subprocess.TimeoutExpired as exc:
            logs = "\n".join(f"--- {r}\n{self.logs(r)[-3000:]}" for r in self._roles())
            raise AssertionError(f"flwr run did not finish in 300 s\n{logs}") from exc
        return done.stdout + done.stderr

    def _roles(self) -> list[str]:
        names = docker("ps", "-a", "--format", "{{.Names}}", "--filter", f"name={self.prefix}-")
        return [n.removeprefix(f"{self.prefix}-") for n in names.stdout.split()]

    def _flwr(
        self, argv: list[str], cwd: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The `flwr` CLI inside the SuperLink container, in `cwd` (it writes into its
        connection and app directories: fresh copies in /tmp)."""
        script = (
            "rm -rf /tmp/cli /tmp/app && cp -r /cli /tmp/cli && cp -r /app-src /tmp/app"
            f' && cd {cwd} && exec flwr "$@"'
        )
        return docker(
            "exec",
            "-e",
            "FLWR_HOME=/tmp/cli",
            "-e",
            "FLWR_TELEMETRY_ENABLED=0",
            self.name(SUPERLINK),
            "sh",
            "-c",
            script,
            "flwr",
            *argv,
            check=False,
            timeout=timeout,
        )

    def start_supernode(
        self,
        node: str,
        *,
        image_version: str | None = None,
        superlink: str | None = None,
        ca: Path | None = None,
        isolation: str = "subprocess",
        node_config: str | None = None,
    ) -> str:
        """A SuperNode with the node's key, dialing the SuperLink's fleet endpoint of its own
        release (or `superlink`), trusting the federation's CA (or `ca`)."""
        version = image_version or self.version
        self.node_key(node)
        args = flower.supernode_args(
            version=version,
            superlink=superlink or flower.fleet_endpoint(version, self.superlink_host),
            insecure=False,
            root_certificates="/ca/ca.crt",
            isolation=isolation,
            node_config=node_config,
            max_retries=0,
            max_wait_time=0,
            auth_private_key="/key/node.key",
        )
        volumes = ["-v", f"{ca or self.tls.ca_cert}:/ca/ca.crt:ro"]
        volumes += ["-v", f"{self.workdir / 'keys' / node}:/key:ro"]
        return self._run(node, volumes, [self.image_of(version), *args])

    def start_superexec(self, node: str, *, image_version: str | None = None) -> str:
        """The ClientApp SuperExec paired with SuperNode `node` (started with isolation
        "process"), in that SuperNode's network namespace: it dials the SuperNode's local
        ClientAppIO/Runtime API on 127.0.0.1, as the appliance's pair does on the host network."""
        version = image_version or self.version
        args = flower.superexec_args(version=version)
        network = ["--network", f"container:{self.name(node)}"]
        entry = ["--entrypoint", "flower-superexec", self.image_of(version), *args]
        return self._run(f"{node}-superexec", network, entry)

    def _run(self, role: str, *parts: list[str]) -> str:
        argv = ["run", "-d", "--name", self.name(role), "-e", "FLWR_TELEMETRY_ENABLED=0"]
        if parts[0][:1] != ["--network"]:
            argv += ["--network", self.network, "--network-alias", self.name(role)]
        for part in parts:
            argv += part
        docker(*argv)
        return self.name(role)

    def logs(self, role: str) -> str:
        """The container's log, colours stripped (as the agent reads it from the engine)."""
        done = subprocess.run(
            ["docker", "logs", self.name(role)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        return _ANSI.sub("", done.stdout)

    def wait_for(self, role: str, pattern: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.logs(role)
            if re.search(pattern, text):
                return text
            time.sleep(1)
        raise TimeoutError(f"{role}: no {pattern!r} in {timeout:.0f}s:\n{self.logs(role)}")

    def stop(self, role: str) -> None:
        docker("stop", "-t", "3", self.name(role))

    def start(self, role: str) -> None:
        docker("start", self.name(role))

    def close(self) -> None:
        """Remove every container and the network this federation created."""
        names = docker("ps", "-aq", "--filter", f"name={self.prefix}-", check=False).stdout
        if names.split():
            docker("rm", "-f", *names.split(), check=False)
        docker("network", "rm", self.network, check=False)
        shutil.rmtree(self.workdir / "state", ignore_errors=True)
