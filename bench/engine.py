"""A private Docker engine: its own dockerd, socket, data root and containerd.

Benchmarks and fault tests run `fl-agent boot` against it (through DOCKER_HOST), so the fixed
container name `flower-supernode` never collides with other test runs on the machine's engine,
and stopping the engine mid-boot stops nobody else's. Started the way scripts/setup.sh starts
the machine's engine (`setsid dockerd --storage-driver=overlay2`); needs root.

The engine gets a bridge of its own (named after its directory, on a free 10.213.x.0/24 subnet),
created before dockerd starts and removed after it stops. Never `--bridge=none` in the host's
network namespace: a dockerd started that way deletes the host's `docker0` (the machine
engine's default network) at start. With `own_netns` the engine has a network namespace of its
own, where `--bridge=none` touches nothing of the host's. `--iptables=false
--ip-forward=false` keep the host's firewall and sysctls as they are.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

MAIN_HOST = "unix:///var/run/docker.sock"
CREATED_BRIDGES: list[str] = []
"""Every bridge a PrivateEngine of this process created: none may outlive its engine."""


class PrivateEngine:
    """One dockerd under a fresh temporary directory; `env` points the docker SDK and CLI at it."""

    def __init__(self, *, path_first: tuple[str, ...] = (), own_netns: bool = False) -> None:
        """path_first: directories put before PATH for dockerd (e.g. a stand-in
        nvidia-container-runtime-hook); own_netns: run dockerd in a network namespace of its
        own, so nothing it does to bridges reaches the machine's network."""
        # Short paths: the sockets (containerd's too) must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="fle-", dir="/tmp"))
        self.host = f"unix://{self.dir}/d.sock"
        self.bridge = self.dir.name  # "fle-" and 8 characters: within IFNAMSIZ
        self.process: subprocess.Popen | None = None
        self.path_first = path_first
        self.own_netns = own_netns

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def start(self, timeout_s: float = 60.0) -> None:
        """Start dockerd (again, after `stop`) and wait until `docker version` answers."""
        if not self.own_netns:
            self._make_bridge()
        log = open(self.dir / "dockerd.log", "ab")  # noqa: SIM115 - the child keeps it
        with log:
            search = ":".join([*self.path_first, os.environ.get("PATH", "")])
            self.process = subprocess.Popen(
                [
                    "setsid",
                    *(("unshare", "--net") if self.own_netns else ()),
                    "dockerd",
                    "--storage-driver=overlay2",
                    f"--host={self.host}",
                    f"--data-root={self.dir}/data",
                    f"--exec-root={self.dir}/x",
                    f"--pidfile={self.dir}/d.pid",
                    "--bridge=none" if self.own_netns else f"--bridge={self.bridge}",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-forward=false",
                    "--ip-masq=false",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PATH": search},
            )
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.dir / "dockerd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"private dockerd did not come up:\n{tail}")
            time.sleep(0.1)

    def answers(self) -> bool:
        result = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=self.env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        return result.returncode == 0

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, as an engine stop does; SIGKILL if it has not exited in time."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def load_image(self, tag: str) -> None:
        """Copy an image from the machine's engine (no registry is reachable here)."""
        save = subprocess.Popen(
            ["docker", "-H", MAIN_HOST, "save", tag],
            stdout=subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k != "DOCKER_HOST"},
        )
        subprocess.run(
            ["docker", "load", "-q"],
            stdin=save.stdout,
            env=self.env,
            capture_output=True,
            check=True,
            timeout=120,
        )
        if save.wait(60) != 0:
            raise RuntimeError(f"docker save {tag} failed")

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The docker CLI against this engine."""
        return subprocess.run(
            ["docker", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def close(self) -> None:
        """Remove every container, stop the engine, delete its directory."""
        if self.process is not None and self.answers():
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
        self.stop()
        if self.bridge in CREATED_BRIDGES and _link_exists(self.bridge):
            subprocess.run(["ip", "link", "delete", self.bridge, "type", "bridge"], check=False)
        for mount in self._mounts():  # the engine leaves its netns mount behind
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _make_bridge(self) -> None:
        """This engine's own bridge, on a subnet no address or route of the host uses."""
        if _link_exists(self.bridge):
            return
        subnet = _free_subnet()
        gateway = f"{next(subnet.hosts())}/{subnet.prefixlen}"
        for argv in (
            ["ip", "link", "add", "name", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", gateway, "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True, timeout=10)
            if self.bridge not in CREATED_BRIDGES:
                CREATED_BRIDGES.append(self.bridge)

    def _mounts(self) -> list[str]:
        """Mount points under this engine's directory, deepest first."""
        prefix = f"{self.dir}/"
        points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)

    def __enter__(self) -> PrivateEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _link_exists(name: str) -> bool:
    result = subprocess.run(["ip", "link", "show", name], capture_output=True, check=False)
    return result.returncode == 0


def _free_subnet() -> ipaddress.IPv4Network:
    """The first 10.213.x.0/24 that overlaps no address or route on the host."""
    used = []
    for argv in (["ip", "-o", "-4", "addr"], ["ip", "-o", "-4", "route"]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for word in out.split():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(word, strict=False))
    for third in range(256):
        candidate = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.213.x.0/24 subnet for the private engine's bridge")
