"""The NVIDIA Container Toolkit: what is there (`detect`), and making it be there (`ensure`).

Facts come from files under the Root (binaries on dockerd's PATH, the dpkg status file,
daemon.json, the runtime's config.toml) and, when an engine is given, from the engine.

`ensure` is the one repair the validation makes. Each step is bounded in time and runs
through an injectable `Runner`:

1. packages: the `.deb` files baked into the image (`/opt/fl-agent/nvidia-toolkit/*.deb`,
   installed together with `dpkg -i`, offline), else NVIDIA's apt repository signed by the
   keyring shipped in the image (update and install restricted to that one source list);
2. daemon.json, after a fresh install only (`runtimes.nvidia` serves --runtime=nvidia; Docker's
   --gpus does not need it): `nvidia-ctk runtime configure --runtime=docker`, checked
   afterwards (valid JSON object, every other key kept, `runtimes.nvidia.path` set) and
   restored from the snapshot when not; then the agent's own merge (`configure_daemon_json`);
3. `systemctl restart docker` after an install, or when dockerd started before the hook was on
   its PATH: dockerd registers its NVIDIA device driver only at start. Never in a periodic run
   (`restart_engine=False`).

Another root than `/` (a throwaway tree in tests, an image being built) is handled by pointing
the package tools at it: `dpkg --root=<root>`, and apt through a generated `APT_CONFIG` file
(`Dir "<root>/"`, dpkg `--root`) that also keeps the host's apt hooks out. Paths written into
that root (the source list's `signed-by`) are the paths as the apt process sees them. The engine
restart acts on the live machine, so it runs only for the root `/` or with an injected runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from agent.atomicfile import write_atomic
from agent.command import RunResult, run_command
from agent.config import Config
from agent.errors import Problem
from agent.gpu.refusals import TOOLKIT_MODE_FIX
from agent.paths import Root
from agent.state import file_lock
from agent.toolkit_modes import (
    GpusPath,
    ModeResolution,
    gpus_path,
    installed_at,
    process_started_at,
    resolve_mode,
    started_before,
)

NVIDIA_REPO_URL = "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)"
KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
SOURCE_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
BAKED_DIR = "/opt/fl-agent/nvidia-toolkit"
RUNTIME_CONFIG = "/etc/nvidia-container-runtime/config.toml"
DPKG_STATUS = "/var/lib/dpkg/status"
CTK = "nvidia-ctk"
HOOK = "nvidia-container-runtime-hook"
RUNTIME_NAME = "nvidia"
RUNTIME_PATH = "nvidia-container-runtime"
# What apt installs (the rest are its dependencies) and what detect reports versions of.
INSTALL_PACKAGES = ("nvidia-container-toolkit",)
TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
# systemd's default PATH for services: dockerd's PATH when no running dockerd says otherwise.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP_TIMEOUT_S = 120.0
RESTART_TIMEOUT_S = 60.0
# apt's words for a repository it cannot reach, and for one whose signature it refuses.
OFFLINE_MARKERS = (
    "Could not resolve",
    "Could not connect",
    "Temporary failure",
    "Unable to connect",
)
UNTRUSTED_MARKERS = ("NO_PUBKEY", "is not signed", "GPG error")
UNTRUSTED_FIX = (
    f"ship NVIDIA's current public key as {KEYRING} (the repository key may have rotated)"
)


# --- running commands ---


class Runner(Protocol):
    def __call__(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
    ) -> RunResult: ...


# --- facts ---


@dataclass(frozen=True)
class ToolkitFacts:
    """What the toolkit looks like. Paths are system paths as seen inside the Root.

    mode: the nvidia *runtime*'s mode as the toolkit resolves it (`toolkit_modes.resolve_mode`:
    "auto" is legacy up to 1.17 and jit-cdi from 1.18); Docker's --gpus runs the hook, whose
    mode is `resolved_mode("hook")`. None when the toolkit is not installed.
    engine_started_at / hook_installed_at: when the running dockerd started and when the hook
    was put in place (epoch seconds; None: unknown), which decide whether dockerd registered
    its NVIDIA device driver (`gpus`).
    """

    ctk_path: str | None = None
    hook_path: str | None = None
    packages: dict[str, str] = field(default_factory=dict)
    daemon_runtime: str | None = None
    default_runtime: str | None = None
    engine_runtimes: tuple[str, ...] = ()
    mode: str | None = None
    mode_configured: str | None = None
    search_path: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    engine_started_at: float | None = None
    hook_installed_at: float | None = None

    @property
    def installed(self) -> bool:
        return self.ctk_path is not None and self.hook_path is not None

    @property
    def gpus(self) -> GpusPath:
        """How Docker serves --gpus here: the hook on dockerd's PATH when dockerd started."""
        return gpus_path(
            hook_on_path=self.hook_path is not None,
            hook_at_engine_start=self.hook_path is not None
            and started_before(self.engine_started_at, self.hook_installed_at),
            configured_mode=self.mode_configured,
            toolkit_version=self.version,
        )

    @property
    def configured(self) -> bool:
        """Docker's --gpus works: dockerd has the NVIDIA device driver and the hook's mode serves
        it (`runtimes.nvidia` in daemon.json is needed only for --runtime=nvidia)."""
        return self.gpus.ok

    @property
    def ready(self) -> bool:
        return self.installed and self.configured and not self.problems

    @property
    def version(self) -> str | None:
        return _version(self.packages)

    def resolved_mode(self, component: str) -> ModeResolution:
        """The mode the toolkit's `component` ("runtime" or "hook": Docker --gpus) resolves."""
        return resolve_mode(self.mode_configured, self.version, component=component)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = [p.to_dict() for p in self.problems]
        data["engine_runtimes"] = list(self.engine_runtimes)
        data["search_path"] = list(self.search_path)
        data.update(installed=self.installed, configured=self.configured, ready=self.ready)
        data["hook_mode"] = self.resolved_mode("hook").mode if self.installed else None
        return data


def detect(root: Root, engine=None) -> ToolkitFacts:
    """Observe the toolkit; never changes anything."""
    dockerd = _dockerd(root)
    search = _search_path(dockerd)
    ctk, hook = (_which(root, name, search) for name in (CTK, HOOK))
    daemon, daemon_problem = read_daemon_json(root)
    runtimes = daemon.get("runtimes") if isinstance(daemon, dict) else None
    nvidia = runtimes.get(RUNTIME_NAME) if isinstance(runtimes, dict) else None
    daemon_runtime = nvidia.get("path") if isinstance(nvidia, dict) else None
    default_runtime = daemon.get("default-runtime") if isinstance(daemon, dict) else None
    engine_runtimes, engine_problem = _engine_runtimes(engine)
    configured_mode, mode_problem = _configured_mode(root)
    installed = ctk is not None and hook is not None
    packages = installed_packages(root, TOOLKIT_PACKAGES)
    runtime_mode = resolve_mode(configured_mode, _version(packages), component="runtime").mode
    facts = ToolkitFacts(
        ctk_path=ctk,
        hook_path=hook,
        packages=packages,
        daemon_runtime=daemon_runtime if isinstance(daemon_runtime, str) else None,
        default_runtime=default_runtime if isinstance(default_runtime, str) else None,
        engine_runtimes=engine_runtimes,
        mode=runtime_mode if installed else None,
        mode_configured=configured_mode,
        search_path=search,
        engine_started_at=process_started_at(root, int(dockerd.name)) if dockerd else None,
        hook_installed_at=installed_at(root, hook),
    )
    found = [p for p in (daemon_problem, engine_problem, mode_problem) if p]
    return _with_problems(facts, [*_state_problems(facts), *found])


def _with_problems(facts: ToolkitFacts, problems: list[Problem]) -> ToolkitFacts:
    return replace(facts, problems=tuple(problems))


def _state_problems(facts: ToolkitFacts) -> list[Problem]:
    if not facts.installed:
        missing = [n for n, p in ((CTK, facts.ctk_path), (HOOK, facts.hook_path)) if p is None]
        where = ":".join(facts.search_path)
        return [
            Problem(
                "toolkit_missing",
                "nvidia-container-toolkit",
                f"{' and '.join(missing)} not found on dockerd's PATH ({where})",
                "install the nvidia-container-toolkit package (FL_TOOLKIT_INSTALL=AUTO does it)",
            )
        ]
    gpus = facts.gpus
    if gpus.restart_engine:
        return [Problem("docker_restart_needed", "docker engine", gpus.reason, _RESTART_FIX)]
    if not gpus.ok:
        return [Problem("toolkit_cdi_mode", RUNTIME_CONFIG, gpus.reason, TOOLKIT_MODE_FIX)]
    return []


_RESTART_FIX = (
    "`systemctl restart docker` (dockerd registers its NVIDIA device driver only when it "
    "starts; the boot does it once)"
)


def _version(packages: Mapping[str, str]) -> str | None:
    """The toolkit's package version (the -base package on minimal installs)."""
    return next((packages[p] for p in TOOLKIT_PACKAGES[:2] if p in packages), None)


def _dockerd(root: Root) -> Path | None:
    """The running dockerd's /proc entry under the Root, or None."""
    with contextlib.suppress(OSError):
        for entry in root.proc.iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if (entry / "comm").read_text().strip() == "dockerd":
                        return entry
    return None


def _search_path(dockerd: Path | None) -> tuple[str, ...]:
    """dockerd's PATH: from the running dockerd's environment, else systemd's."""
    if dockerd is not None:
        with contextlib.suppress(OSError):
            for var in (dockerd / "environ").read_bytes().split(b"\0"):
                if var.startswith(b"PATH="):
                    return tuple(d for d in os.fsdecode(var[5:]).split(":") if d)
    return tuple(SERVICE_PATH.split(":"))


def _which(root: Root, name: str, search: Sequence[str]) -> str | None:
    for directory in search:
        candidate = root.path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return f"{directory.rstrip('/')}/{name}"
    return None


def installed_packages(root: Root, names: Sequence[str]) -> dict[str, str]:
    """name -> version for the named packages dpkg has installed: Status 'ok installed',
    wanted 'install' or 'hold' (the image and the agent hold what they install)."""
    try:
        text = root.path(DPKG_STATUS).read_text(errors="replace")
    except OSError:
        return {}
    found: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields = _stanza_fields(stanza)
        name = fields.get("Package")
        if name in names and fields.get("Status", "").split()[1:] == ["ok", "installed"]:
            found[name] = fields.get("Version", "")
    return found


def _stanza_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line[:1] not in (" ", "\t") and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _engine_runtimes(engine) -> tuple[tuple[str, ...], Problem | None]:
    if engine is None:
        return (), None
    try:
        info = engine.info()
    except Exception as exc:  # agent.engine.EngineError, or any engine's "no answer"
        return (), Problem(
            "docker_unreachable",
            "docker engine",
            f"could not ask the engine for its runtimes: {exc}",
            "systemctl status docker; journalctl -u docker",
        )
    return tuple(sorted(info.get("Runtimes") or {})), None


def _configured_mode(root: Root) -> tuple[str | None, Problem | None]:
    path = root.path(RUNTIME_CONFIG)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, Problem(
            "toolkit_config_invalid",
            RUNTIME_CONFIG,
            f"cannot read the runtime's config: {exc}",
            "regenerate it: nvidia-ctk config default --output=" + RUNTIME_CONFIG,
        )
    section = data.get("nvidia-container-runtime")
    mode = section.get("mode") if isinstance(section, dict) else None
    return (mode if isinstance(mode, str) else None), None


# --- daemon.json ---


def read_daemon_json(root: Root) -> tuple[dict[str, Any] | None, Problem | None]:
    """The parsed daemon.json: {} when missing or blank; None and a problem when invalid."""
    path = root.docker_daemon_json
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, _daemon_invalid(f"cannot read it: {exc}")
    if not text.strip():
        return {}, None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, _daemon_invalid(f"invalid JSON: {exc}")
    if not isinstance(data, dict):
        return None, _daemon_invalid(f"a JSON {type(data).__name__}, not an object")
    if not isinstance(data.get("runtimes", {}), dict):
        return None, _daemon_invalid("its `runtimes` is not a JSON object")
    return data, None


def _daemon_invalid(message: str) -> Problem:
    return Problem(
        "daemon_json_invalid",
        "/etc/docker/daemon.json",
        message,
        "repair the file by hand (dockerd does not start with it either); the agent leaves "
        "it alone and keeps a copy in daemon.json.fl-agent.bak",
    )


def merged_daemon_json(current: Mapping[str, Any]) -> dict[str, Any]:
    """`current` with runtimes.nvidia added the way nvidia-ctk adds it; other keys kept."""
    merged = dict(current)
    runtimes = dict(merged.get("runtimes") or {})
    runtimes[RUNTIME_NAME] = {"path": RUNTIME_PATH, "args": []}
    merged["runtimes"] = runtimes
    return merged


def configure_daemon_json(root: Root) -> Problem | None:
    """Add runtimes.nvidia to daemon.json itself (nvidia-ctk absent or broken): atomic, backed up.

    The output has nvidia-ctk's shape (sorted keys, 4-space indent). An invalid file is never
    replaced: it is copied aside and reported.
    """
    current, problem = read_daemon_json(root)
    if current is None:
        _backup(root.docker_daemon_json)
        return problem
    path = root.docker_daemon_json
    text = json.dumps(merged_daemon_json(current), indent=4, sort_keys=True) + "\n"
    write_atomic(path, text, mode=_file_mode(path), backup=True)
    return None


def daemon_json_check(before: Mapping[str, Any], after_text: str) -> str | None:
    """Why `after_text` is not an acceptable daemon.json after configuring; None when it is."""
    try:
        after = json.loads(after_text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(after, dict):
        return "not a JSON object"
    lost = [k for k, v in before.items() if k != "runtimes" and after.get(k) != v]
    if lost:
        return f"keys lost or changed: {', '.join(sorted(lost))}"
    runtimes = after.get("runtimes")
    if not isinstance(runtimes, dict):
        return "runtimes missing"
    old_runtimes = before.get("runtimes") or {}
    lost = [k for k in old_runtimes if k != RUNTIME_NAME and runtimes.get(k) != old_runtimes[k]]
    if lost:
        return f"runtimes lost or changed: {', '.join(sorted(lost))}"
    nvidia = runtimes.get(RUNTIME_NAME)
    if not isinstance(nvidia, dict) or not nvidia.get("path"):
        return "runtimes.nvidia.path missing"
    return None


def _backup(path: Path) -> Path | None:
    if not path.exists():
        return None
    backup = path.with_name(path.name + ".fl-agent.bak")
    write_atomic(backup, path.read_bytes(), mode=_file_mode(path))
    return backup


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o644


# --- ensure ---


class ToolkitAction(StrEnum):
    PRESENT = "present"
    INSTALLED = "installed"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class ToolkitResult:
    action: ToolkitAction
    facts: ToolkitFacts
    problem: Problem | None = None
    duration_ms: int = 0
    steps: tuple[str, ...] = ()  # what was done, in order, for the report

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": str(self.action),
            "facts": self.facts.to_dict(),
            "problem": self.problem.to_dict() if self.problem else None,
            "duration_ms": self.duration_ms,
            "steps": list(self.steps),
        }


class _Failed(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass
class _Job:
    """One ensure() run: the root, the runner, the deadline and the steps taken."""

    root: Root
    runner: Runner
    deadline: float
    injected_runner: bool
    repo_url: str
    restart_engine: bool = True  # False in a periodic run: the engine is left to the next boot
    steps: list[str] = field(default_factory=list)
    changed: bool = False

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Failed(
                Problem(
                    "toolkit_timeout",
                    "nvidia-container-toolkit",
                    "the time allowed for installing the toolkit ran out",
                    "check the network and the package source, then reboot or run "
                    "`fl-agent validate` again",
                )
            )
        return left

    def run(
        self, label: str, argv: Sequence[str], limit: float = STEP_TIMEOUT_S, env=None
    ) -> RunResult:
        timeout = min(limit, self.remaining())
        result = self.runner(argv, timeout=timeout, env=env if env is not None else _env())
        self.steps.append(f"{label}: exit {result.returncode}")
        return result


def ensure(
    config: Config,
    root: Root,
    *,
    gpu_present: bool,
    engine=None,
    runner: Runner | None = None,
    timeout_s: float = 300,
    repo_url: str = NVIDIA_REPO_URL,
    restart_engine: bool = True,
) -> ToolkitResult:
    """Make the toolkit present and wired into Docker when a GPU needs it; idempotent.

    `repo_url` is the apt repository (flat, `deb <url> /`) used when no packages are baked in.
    `restart_engine`: the boot restarts dockerd (once) so it registers its NVIDIA device
    driver; a periodic run never does (the running SuperNode would go with it).
    """
    started = time.monotonic()
    facts = detect(root, engine)

    def done(action: ToolkitAction, problem: Problem | None, steps=(), after=None) -> ToolkitResult:
        duration = int((time.monotonic() - started) * 1000)
        return ToolkitResult(action, after or facts, problem, duration, tuple(steps))

    if facts.ready:
        return done(ToolkitAction.PRESENT, None)
    if not gpu_present:
        return done(ToolkitAction.SKIPPED, None, ["no GPU: toolkit not needed"])
    blocking = _blocking_problem(facts)
    if config.toolkit_install == "NEVER":
        return done(ToolkitAction.SKIPPED, blocking, ["FL_TOOLKIT_INSTALL=NEVER: nothing changed"])
    job = _Job(
        root=root,
        runner=runner or run_command,
        deadline=started + timeout_s,
        injected_runner=runner is not None,
        repo_url=repo_url,
        restart_engine=restart_engine,
    )
    try:
        with _lock(root, job):
            after = _converge(job, engine)
    except _Failed as failed:
        return done(ToolkitAction.FAILED, failed.problem, job.steps, detect(root, engine))
    if not after.ready:
        return done(ToolkitAction.FAILED, _blocking_problem(after), job.steps, after)
    installed = ToolkitAction.INSTALLED if job.changed else ToolkitAction.PRESENT
    return done(installed, None, job.steps, after)


def _blocking_problem(facts: ToolkitFacts) -> Problem | None:
    return facts.problems[0] if facts.problems else None


def _converge(job: _Job, engine) -> ToolkitFacts:
    """Under the lock: look again (another run may have finished), then do what is missing."""
    facts = detect(job.root, engine)
    if not facts.installed:
        _install(job)
        facts = detect(job.root, engine)
        if not facts.installed:
            raise _Failed(_problem("toolkit_install_failed", "installed, yet " + _missing(facts)))
    if job.changed and facts.daemon_runtime is None:
        _configure(job, facts)  # a fresh install also serves --runtime=nvidia
    if job.changed or facts.gpus.restart_engine:
        _restart_docker(job, engine)
    return detect(job.root, engine)


def _missing(facts: ToolkitFacts) -> str:
    problems = _state_problems(facts)
    return problems[0].message if problems else "incomplete"


def _problem(name: str, message: str, fix: str = "") -> Problem:
    fixes = {
        "toolkit_install_failed": "the message quotes the package tool; install "
        "nvidia-container-toolkit by hand, or bake its .deb files into " + BAKED_DIR,
        "toolkit_offline": "give the VM access to nvidia.github.io, or bake the toolkit's "
        f".deb files into {BAKED_DIR} when building the image",
        "toolkit_no_source": f"bake the toolkit's .deb files into {BAKED_DIR}, or ship "
        f"NVIDIA's apt keyring as {KEYRING}",
        "toolkit_configure_failed": "nvidia-ctk runtime configure --runtime=docker",
        "docker_restart_failed": "systemctl restart docker; journalctl -u docker",
        "toolkit_lock_timeout": "another fl-agent is installing the toolkit; wait and retry",
    }
    return Problem(name, "nvidia-container-toolkit", message, fix or fixes.get(name, ""))


@contextlib.contextmanager
def _lock(root: Root, job: _Job) -> Iterator[None]:
    wait_s = max(0.0, job.deadline - time.monotonic())
    with file_lock(root.run_dir / "toolkit.lock", wait_s=wait_s) as held:
        if not held:
            raise _Failed(_problem("toolkit_lock_timeout", "the toolkit lock stayed taken"))
        yield


def _env() -> dict[str, str]:
    env = dict(os.environ)
    dirs = [d for d in env.get("PATH", "").split(":") if d]
    env["PATH"] = ":".join(dirs + [d for d in SERVICE_PATH.split(":") if d not in dirs])
    env["DEBIAN_FRONTEND"] = "noninteractive"
    return env


# --- install ---


def _install(job: _Job) -> None:
    baked = sorted(job.root.path(BAKED_DIR).glob("*.deb"))
    if baked:
        _install_baked(job, baked)
    elif job.root.path(KEYRING).is_file():
        _install_from_repo(job)
    else:
        raise _Failed(
            _problem(
                "toolkit_no_source",
                f"no packages in {BAKED_DIR} and no NVIDIA apt keyring at {KEYRING}",
            )
        )
    job.changed = True
    _hold(job)


def _hold(job: _Job) -> None:
    """`apt-mark hold` what was installed: an unattended upgrade would swap the toolkit under a
    running node, and its package's daemon-reload takes a GPU container's GPUs away
    (docs/gpu-health.md). A failed hold is a step in the report, not a failed install."""
    names = sorted(installed_packages(job.root, TOOLKIT_PACKAGES))
    if names:
        job.run("apt-mark hold", ["apt-mark", "hold", *names], env=_apt_env(job.root))


def _install_baked(job: _Job, debs: list[Path]) -> None:
    dpkg = ["dpkg", f"--root={job.root.prefix}", "--force-confold", "-i"]
    result = job.run(f"dpkg -i {len(debs)} baked packages", [*dpkg, *(str(d) for d in debs)])
    if not result.ok:
        raise _Failed(_problem("toolkit_install_failed", f"dpkg -i failed: {result.tail()}"))


def _install_from_repo(job: _Job) -> None:
    root = job.root
    keyring = root.path(KEYRING)
    line = f"deb [signed-by={keyring}] {job.repo_url} /\n"
    source = root.path(SOURCE_LIST)
    if not source.is_file() or source.read_text() != line:
        write_atomic(source, line)
    env = _apt_env(root)
    only_ours = [
        "-o",
        f"Dir::Etc::SourceList={source}",
        "-o",
        "Dir::Etc::SourceParts=-",
        "-o",
        "APT::Get::List-Cleanup=0",
    ]
    update = job.run("apt-get update", ["apt-get", "-q", *only_ours, "update"], env=env)
    if any(m in update.output for m in OFFLINE_MARKERS):
        raise _Failed(_problem("toolkit_offline", f"cannot read {job.repo_url}: {update.tail(3)}"))
    if not update.ok or any(m in update.output for m in UNTRUSTED_MARKERS):
        message = f"apt-get update of {job.repo_url} failed: {update.tail(3)}"
        raise _Failed(_problem("toolkit_install_failed", message, fix=UNTRUSTED_FIX))
    install = ["apt-get", "-q", "-y", "--no-install-recommends", *only_ours, "install"]
    result = job.run("apt-get install", [*install, *INSTALL_PACKAGES], env=env)
    if not result.ok:
        raise _Failed(_problem("toolkit_install_failed", f"apt-get install: {result.tail()}"))


def _apt_env(root: Root) -> dict[str, str]:
    """apt's environment: for another root, an APT_CONFIG that points every apt path at it."""
    env = _env()
    if root.prefix.resolve() == Path("/"):
        return env
    for directory in (
        "/var/lib/apt/lists/partial",
        "/var/cache/apt/archives/partial",
        "/etc/apt/apt.conf.d",
        "/etc/apt/preferences.d",
        "/var/log/apt",
        "/var/lib/dpkg/info",
        "/var/lib/dpkg/updates",
    ):
        root.path(directory).mkdir(parents=True, exist_ok=True)
    status = root.path(DPKG_STATUS)
    if not status.exists():
        status.touch()
    prefix = root.prefix.resolve()
    conf = root.run_dir / "apt.conf"
    conf.write_text(
        f'Dir "{prefix}/";\nAPT::Sandbox::User "root";\nDPkg::Options:: "--root={prefix}";\n'
    )
    env["APT_CONFIG"] = str(conf)
    return env


# --- configure and restart ---


def _configure(job: _Job, facts: ToolkitFacts) -> None:
    """nvidia-ctk first (the vendor's way), checked and undone when bad; then our own merge."""
    path = job.root.docker_daemon_json
    before, problem = read_daemon_json(job.root)
    if before is None:
        _backup(path)
        raise _Failed(problem or _daemon_invalid("unreadable"))
    snapshot = path.read_bytes() if path.exists() else None
    _backup(path)
    if facts.ctk_path is not None:
        ctk = str(job.root.path(facts.ctk_path))
        argv = [ctk, "runtime", "configure", "--runtime=docker", f"--config={path}"]
        result = job.run("nvidia-ctk runtime configure", argv)
        after = path.read_text(errors="replace") if path.exists() else ""
        why = None if result.ok else f"exit {result.returncode}: {result.tail(2)}"
        why = why or daemon_json_check(before, after)
        if why is None:
            job.changed = True
            return
        _restore(path, snapshot)
        job.steps.append(f"nvidia-ctk left daemon.json unusable ({why}); restored it")
    problem = configure_daemon_json(job.root)
    if problem:
        raise _Failed(problem)
    job.steps.append("daemon.json: runtimes.nvidia added by the agent")
    job.changed = True


def _restore(path: Path, snapshot: bytes | None) -> None:
    if snapshot is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, snapshot, mode=_file_mode(path))


def _restart_docker(job: _Job, engine) -> None:
    if not job.restart_engine:
        job.steps.append("docker restart needed, left to the next boot (periodic run)")
        return
    if not job.injected_runner and job.root.prefix.resolve() != Path("/"):
        job.steps.append(f"docker restart skipped: root is {job.root.prefix}, not /")
        return
    result = job.run(
        "systemctl restart docker", ["systemctl", "restart", "docker"], limit=RESTART_TIMEOUT_S
    )
    if not result.ok:
        raise _Failed(_problem("docker_restart_failed", f"restart failed: {result.tail(3)}"))
    if engine is not None:
        from agent.engine import wait_ready

        if not wait_ready(engine, min(RESTART_TIMEOUT_S, job.remaining())):
            message = "the engine did not answer after restart"
            raise _Failed(_problem("docker_restart_failed", message))


__all__ = [
    "NVIDIA_REPO_URL",
    "RunResult",
    "Runner",
    "ToolkitFacts",
    "ToolkitResult",
    "configure_daemon_json",
    "detect",
    "ensure",
    "read_daemon_json",
    "run_command",
]
