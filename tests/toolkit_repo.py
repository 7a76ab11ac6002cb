"""A stand-in NVIDIA Container Toolkit, packaged for real, and a signed flat apt repository.

Two packages built with dpkg-deb, shaped like NVIDIA's (the same names, files and dependency):
- nvidia-container-toolkit-base: /usr/bin/nvidia-ctk (a Python script that does
  `runtime configure --runtime=docker` the way the real one does: whole file rewritten, keys
  sorted, 4-space indent, runtimes.nvidia added, fails on an empty or invalid file; with
  FAKE_NVIDIA_CTK=partial it dies halfway through writing), /usr/bin/nvidia-container-runtime
  and /etc/nvidia-container-runtime/config.toml (mode "auto");
- nvidia-container-toolkit: /usr/bin/nvidia-container-runtime-hook, depending on the base.

The repository is flat (`deb [signed-by=KEYRING] file://DIR/$(ARCH) /`, like NVIDIA's), with a
Release file signed by a throwaway GnuPG key whose public keyring stands in for NVIDIA's.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import textwrap
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

VERSION = "1.17.8-1"

FAKE_CTK = textwrap.dedent(
    '''\
    #!/usr/bin/env python3
    """Stand-in nvidia-ctk: `runtime configure --runtime=docker` as the real one does it."""
    import json
    import os
    import sys

    args = sys.argv[1:]
    if args[:1] == ["--version"]:
        print("NVIDIA Container Toolkit CLI version 1.17.8")
        print("commit: standin")
        sys.exit(0)
    if args[:2] != ["runtime", "configure"]:
        sys.exit("unsupported command: " + " ".join(args))
    opts = {}
    for arg in args[2:]:
        key, _, value = arg.lstrip("-").partition("=")
        opts[key] = value or "true"
    if opts.get("runtime") != "docker":
        sys.exit("only --runtime=docker is supported by this stand-in")
    path = opts.get("config", "/etc/docker/daemon.json")
    if os.path.exists(path):
        print("INFO Loading config from " + path)
        try:
            with open(path) as handle:
                config = json.load(handle)
        except ValueError as exc:
            sys.exit("unable to load config for runtime docker: " + str(exc))
    else:
        print("INFO Config file does not exist; using empty config")
        config = {}
    runtimes = config.get("runtimes") or {}
    runtimes["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
    config["runtimes"] = runtimes
    if opts.get("set-as-default") == "true":
        config["default-runtime"] = "nvidia"
    output = json.dumps(config, indent=4, sort_keys=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:  # like Go's os.Create: truncate in place, not atomic
        if os.environ.get("FAKE_NVIDIA_CTK") == "partial":
            handle.write(output[: len(output) // 2])
            handle.flush()
            sys.exit("simulated crash while writing " + path)
        handle.write(output)
    print("INFO Wrote updated config to " + path)
    print("INFO It is recommended that docker daemon be restarted.")
    '''
)

STUB = "#!/bin/sh\necho 'stand-in {name}'\n"
RUNTIME_TOML = '[nvidia-container-runtime]\nmode = "auto"\nruntimes = ["docker-runc", "runc"]\n'


@dataclass(frozen=True)
class ToolkitRepo:
    debs: tuple[Path, ...]
    url: str  # with $(ARCH), for the source list
    keyring: Path  # public keyring that signed the Release file
    other_keyring: Path  # a key that did not sign it


def build_packages(dest: Path) -> tuple[Path, ...]:
    """The two stand-in .deb files, built with dpkg-deb."""
    base = _package(
        dest / "base",
        "nvidia-container-toolkit-base",
        {
            "usr/bin/nvidia-ctk": (FAKE_CTK, 0o755),
            "usr/bin/nvidia-container-runtime": (STUB.format(name="runtime"), 0o755),
            "etc/nvidia-container-runtime/config.toml": (RUNTIME_TOML, 0o644),
        },
        depends=None,
    )
    toolkit = _package(
        dest / "toolkit",
        "nvidia-container-toolkit",
        {"usr/bin/nvidia-container-runtime-hook": (STUB.format(name="hook"), 0o755)},
        depends=f"nvidia-container-toolkit-base (= {VERSION})",
    )
    return base, toolkit


def _package(tree: Path, name: str, files: dict[str, tuple[str, int]], depends) -> Path:
    for rel, (content, mode) in files.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
    control = tree / "DEBIAN" / "control"
    control.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"Package: {name}",
        f"Version: {VERSION}",
        "Architecture: all",
        "Maintainer: fl-agent tests <tests@example.invalid>",
        *([f"Depends: {depends}"] if depends else []),
        f"Description: stand-in {name} for the fl-agent tests",
    ]
    control.write_text("\n".join(lines) + "\n")
    deb = tree.parent / f"{name}_{VERSION}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


def build_repo(workdir: Path) -> ToolkitRepo:
    """Packages, a flat repository of them, signed; the keyrings to trust it (or not)."""
    debs = build_packages(workdir / "build")
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()
    pool = workdir / "repo" / arch
    pool.mkdir(parents=True)
    for deb in debs:
        (pool / deb.name).write_bytes(deb.read_bytes())
    packages = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", ".", "/dev/null"],
        cwd=pool,
        check=True,
        capture_output=True,
    ).stdout
    (pool / "Packages").write_bytes(packages)
    (pool / "Packages.gz").write_bytes(gzip.compress(packages))
    _write_release(pool)
    gnupg = workdir / "gnupg"
    keyring = _sign(pool, gnupg, workdir / "keyring.gpg")
    other = _key(workdir / "gnupg-other", workdir / "other-keyring.gpg")
    return ToolkitRepo(debs, f"file://{pool.parent}/$(ARCH)", keyring, other)


def _write_release(pool: Path) -> None:
    lines = [
        "Origin: fl-agent-tests",
        "Label: stand-in toolkit",
        f"Date: {formatdate(usegmt=True)}",
    ]
    lines.append("SHA256:")
    for name in ("Packages", "Packages.gz"):
        data = (pool / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    (pool / "Release").write_text("\n".join(lines) + "\n")


def _key(home: Path, keyring: Path) -> Path:
    home.mkdir(mode=0o700, parents=True)
    _gpg(home, "--quick-gen-key", "fl-agent tests <tests@example.invalid>", "ed25519", "sign")
    keyring.write_bytes(_gpg(home, "--export"))
    return keyring


def _sign(pool: Path, home: Path, keyring: Path) -> Path:
    _key(home, keyring)
    _gpg(home, "--clearsign", "-o", str(pool / "InRelease"), str(pool / "Release"))
    return keyring


def _gpg(home: Path, *args: str) -> bytes:
    env = {**os.environ, "GNUPGHOME": str(home)}
    base = ["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""]
    return subprocess.run([*base, *args], env=env, check=True, capture_output=True).stdout


def stop_gpg_agents(workdir: Path) -> None:
    for home in (workdir / "gnupg", workdir / "gnupg-other"):
        subprocess.run(
            ["gpgconf", "--kill", "gpg-agent"],
            env={**os.environ, "GNUPGHOME": str(home)},
            check=False,
            capture_output=True,
        )


def bake_packages(root: Path, workdir: Path) -> None:
    """An image root with a dpkg database and the two packages baked in, as the appliance
    image ships them (agent/toolkit.py BAKED_DIR): what a boot installs offline."""
    import shutil

    from agent.toolkit import BAKED_DIR

    (root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    baked = root / BAKED_DIR.lstrip("/")
    baked.mkdir(parents=True)
    for deb in build_packages(workdir):
        shutil.copy(deb, baked)
