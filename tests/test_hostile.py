"""Hostile input (issue 17): peers, context values and files can neither steer nor stop the node.

Each test is one reproduction from the issue, tried the way an attacker would: a peer VM that
rewrites the SuperLink's template through OneGate, context values built to hang a check or to
reach the host, files that never end. The fuzzer at the end drives generated contexts through
config building and planning with a bound on time and memory per context.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import resource
import socket
import stat
import subprocess
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import flower, tls
from agent.config import Config, build_config, data_dir_problem, parse_image_reference
from agent.context import Platform, Secret, parse_context, read_platform, render_context
from agent.discovery import Pin, discover, pin_path, pin_update, read_pin, write_pin
from agent.errors import AgentError
from agent.onegate import Reporter, RetryPolicy, queue_dir
from agent.paths import Root
from agent.plan import GpuVerdict, ImageFacts, PlanInputs, make_plan, numeric_non_root
from agent.terminal import escape_controls
from agent.toolkit import configure_daemon_json, read_daemon_json
from emulators.onegate import OneGateEmulator

AGENT = [sys.executable, "-m", "agent"]
SUPERLINK, ME, PEER = 41, 51, 52


# --------------------------------------------------------------------------- helpers


def make_cert(*, ca: bool | None = True, self_signed: bool = True, cert_sign: bool = True,
              days: int = 3650, name: str = "test CA") -> str:  # fmt: skip
    """A PEM certificate: basicConstraints CA:`ca` (absent for None), signed by itself or by a
    throw-away issuer, optionally with a keyUsage that forbids signing certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    issuer_key = key if self_signed else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer = subject if self_signed else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "X")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=max(1, 1 - days)))
        .not_valid_after(now + timedelta(days=days))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if not cert_sign:
        usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        builder = builder.add_extension(usage, True)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(Encoding.PEM).decode()


CA1 = make_cert(name="the SuperLink's CA")
CA2 = make_cert(name="the attacker's CA")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def run_agent(*args: str, root=None, limit_bytes: int | None = None, timeout: float = 60):
    env = dict(os.environ)
    if root is not None:
        env["FL_AGENT_ROOT"] = str(root)

    def limit() -> None:
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return subprocess.run(
        [*AGENT, *args], capture_output=True, text=True, env=env, timeout=timeout,
        preexec_fn=limit,
    )  # fmt: skip


def within(seconds: float, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter; a check that backtracks is killed, not waited for
    (a regular expression holds the GIL, so no thread or signal could stop it)."""
    try:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=seconds
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {seconds} s: {code[:80]}")


@pytest.fixture
def emulator():
    with OneGateEmulator() as em:
        em.add_vm(SUPERLINK, ips=("10.0.0.41",))
        for vm_id in (PEER, ME):
            em.add_vm(vm_id, ips=(f"10.0.1.{vm_id}",))
        em.add_service(7, "flower", {"superlink": [SUPERLINK], "supernode": [PEER, ME]})
        yield em


def peer_writes(em, **attributes: str) -> None:
    """The attack: a compromised SuperNode rewrites the SuperLink VM's template (PUT /vms/:id)."""
    body = "\n".join(f"{k}={v}" for k, v in attributes.items())
    answer = requests.put(
        f"{em.endpoint}/vms/{SUPERLINK}",
        data=body,
        headers={"X-ONEGATE-TOKEN": em.vms[PEER].token, "X-ONEGATE-VMID": str(PEER)},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text


def my_context(em, tmp_path, **variables: str):
    """This VM's context.sh, with OneGate on (endpoint, VMID, token)."""
    ctx = tmp_path / "context.sh"
    base = {"ONEGATE_ENDPOINT": em.endpoint, "VMID": str(ME), "ONEGATE_TOKEN": em.vms[ME].token}
    ctx.write_text(render_context({**base, **variables}))
    return ctx


def found_by(em, tmp_path, pinned: Pin | None = None, **changes):
    config = Config(node_config="partition-id=0", **changes)
    platform = Platform(em.endpoint, str(ME), Secret(em.vms[ME].token))
    reporter = Reporter(
        endpoint=platform.onegate_endpoint, vmid=platform.vmid, token=platform.token,
        queue_dir=queue_dir(Root(tmp_path)), total_timeout_s=2.0,
        policy=RetryPolicy(base_s=0.01, cap_s=0.05, connect_timeout_s=0.5, read_timeout_s=0.5),
        rng=random.Random(1),
    )  # fmt: skip
    return discover(
        config, reporter, attempts=1, interval_s=0, ca_attempts=1, ca_interval_s=0,
        sleep=lambda s: None, pinned=pinned,
    )  # fmt: skip


# --------------------------------------------------------------------------- 1. trust on first use


def test_first_boot_pins_endpoint_and_ca_0600(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_CA_CERT=b64(CA1))
    found = found_by(emulator, tmp_path)
    assert found.ok, found.problems
    pin = pin_update(found, None)
    assert pin == Pin("10.0.0.41:9092", CA1)
    root = Root(tmp_path)
    assert write_pin(root, pin) is None
    assert stat.S_IMODE(pin_path(root).stat().st_mode) == 0o600
    assert read_pin(root) == (pin, None)
    assert pin_update(found, pin) is None  # nothing new to pin on the next boot


def test_peer_rewriting_the_superlink_template_does_not_redirect_the_node(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_CA_CERT=b64(CA1))
    pinned = pin_update(found_by(emulator, tmp_path), None)
    peer_writes(emulator, FL_ENDPOINT_BASE64=b64("6.6.6.6:9092"), FL_CA_CERT=b64(CA2))
    peer_writes(emulator, FL_ENDPOINT="6.6.6.6:9092")  # consistent, so not refused as a conflict
    found = found_by(emulator, tmp_path, pinned)
    assert found.ok, found.problems
    assert found.superlink_address == "10.0.0.41:9092" and found.ca_pem == CA1
    assert found.sources["superlink_address"] == "pinned at the first successful boot"
    assert [(w.name, w.subject) for w in found.warnings] == [
        ("superlink_identity_changed", "FL_SUPERLINK_ADDRESS"),
        ("superlink_identity_changed", "FL_CA_CERT"),
    ]
    assert "6.6.6.6:9092" in found.warnings[0].message and "trust --accept" in found.warnings[0].fix
    assert pin_update(found, pinned) is None  # the pin is never replaced by a boot


def test_conflicting_plain_and_base64_values_are_refused(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_TLS="NO")
    peer_writes(emulator, FL_ENDPOINT_BASE64=b64("6.6.6.6:9092"))
    found = found_by(emulator, tmp_path, tls_enabled=False)
    assert [(p.name, p.subject) for p in found.problems] == [("conflicting_values", "FL_ENDPOINT")]
    assert found.superlink_address is None
    emulator.set_attributes(
        SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_TLS="YES", FL_CA_CERT=b64(CA1)
    )
    peer_writes(emulator, FL_ENDPOINT_BASE64=b64("10.0.0.41:9092"), FL_CA_CERT_BASE64=b64(CA2))
    found = found_by(emulator, tmp_path)
    assert [(p.name, p.subject) for p in found.problems] == [("conflicting_values", "FL_CA_CERT")]


def test_context_ca_is_never_overridden_and_static_address_pins_the_ca(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_CA_CERT=b64(CA2))
    found = found_by(emulator, tmp_path, ssl_ca_cert=CA1, pinned=Pin(None, CA2))
    assert found.ca_pem == CA1 and found.sources["ca_pem"] == "FL_SSL_CA_CERT"
    # FL_SUPERLINK_ADDRESS set: the CA still comes from OneGate, but only the first time.
    emulator.set_attributes(SUPERLINK, FL_CA_CERT=b64(CA1))
    first = found_by(emulator, tmp_path, superlink_address="10.0.0.41:9092")
    pinned = pin_update(first, None)
    assert pinned == Pin(None, CA1)
    peer_writes(emulator, FL_CA_CERT=b64(CA2))
    later = found_by(emulator, tmp_path, pinned, superlink_address="10.0.0.41:9092")
    assert later.ok and later.ca_pem == CA1
    assert [w.name for w in later.warnings] == ["superlink_identity_changed"]


def test_pin_file_that_is_not_a_pin_is_a_named_problem(tmp_path):
    root = Root(tmp_path)
    for content in (b"[]", b"{", b'{"superlink_address": 7}', b'{"superlink_address": "x"}'):
        pin_path(root).parent.mkdir(parents=True, exist_ok=True)
        pin_path(root).write_bytes(content)
        pin, problem = read_pin(root)
        assert pin is None and problem.name == "superlink_pin_invalid", content


def test_trust_command_shows_the_change_and_accept_pins_it(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_CA_CERT=b64(CA1))
    ctx = my_context(emulator, tmp_path, FL_NODE_CONFIG="partition-id=0")
    root = tmp_path / "root"
    trust = ("trust", "--context-file", str(ctx), "--json")
    first = run_agent(*trust, "--accept", root=root)
    assert first.returncode == 0, first.stdout + first.stderr
    assert read_pin(Root(root))[0] == Pin("10.0.0.41:9092", CA1)
    peer_writes(emulator, FL_ENDPOINT="6.6.6.6:9092")
    shown = run_agent(*trust, root=root)
    data = json.loads(shown.stdout)
    assert shown.returncode == 1 and data["differs"] is True
    assert data["published"]["superlink_address"] == "6.6.6.6:9092"
    assert data["pinned"]["superlink_address"] == "10.0.0.41:9092"
    assert run_agent(*trust, "--accept", root=root).returncode == 0
    assert read_pin(Root(root))[0].superlink_address == "6.6.6.6:9092"
    assert emulator.vms[ME].token not in shown.stdout + shown.stderr


# --------------------------------------------------------------------------- 2. linear, X.509


def test_pem_of_whitespace_is_checked_at_once():
    """The old PEM pattern backtracked cubically: 4 KB of whitespace took 35 s."""
    code = (
        "import base64\nfrom agent.tls import check_ca\n"
        "from agent.config import decode_pem_base64\n"
        "pem = '-----BEGIN CERTIFICATE-----' + ' \\n' * 30000 + '!-----END CERTIFICATE-----'\n"
        "assert check_ca(pem)[0] is None\n"
        "assert decode_pem_base64(base64.b64encode(pem.encode()).decode()) is not None\n"
        "from agent.discovery import _pem_text; _pem_text(pem)\n"
    )
    result = within(20, code)
    assert result.returncode == 0, result.stderr


def test_boot_dry_run_with_a_whitespace_pem_ends_at_once(tmp_path):
    pem = "-----BEGIN CERTIFICATE-----" + " " * 4096 + "!\n-----END CERTIFICATE-----\n"
    ctx = tmp_path / "context.sh"
    ctx.write_text(
        render_context({"FL_SUPERLINK_ADDRESS": "127.0.0.1:9092", "FL_SSL_CA_CERT": b64(pem)})
    )
    args = ("boot", "--dry-run", "--json", "--context-file", str(ctx))
    try:
        result = run_agent(*args, root=tmp_path / "root", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("boot --dry-run still checking a 4 KB PEM after 30 s")
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["problems"][0]["name"] == "tls_error"


def test_node_config_check_is_linear():
    code = (
        "from agent.config import validate_node_config\n"
        "for text in ('a' * 4096, 'a=' * 2048, \"k='\" * 1365, 'k=1 ' * 1000 + 'x'):\n"
        "    assert validate_node_config(text) is not None\n"
    )
    result = within(20, code)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("pem", "words"),
    [
        (make_cert(ca=False), "leaf certificate (CA:FALSE)"),
        (make_cert(ca=None, self_signed=False), "no CA:TRUE basic constraint and not self-signed"),
        (make_cert(ca=True, self_signed=False) + "", None),  # an intermediate CA
        (make_cert(ca=None), None),  # a version-1 style self-signed root
        (make_cert(cert_sign=False), "does not allow signing certificates"),
        (make_cert(days=-2), "expired on"),
        (CA1 * 9, "more than 8"),
        (CA1 + " " * 70_000, "more than the 65536"),
        (CA1.replace("-----END", "é-----END"), "not ASCII"),
    ],
)
def test_ca_check_through_cryptography(pem, words):
    clean, why = tls.check_ca(pem)
    if words is None:
        assert clean is not None and why == "", why
    else:
        assert clean is None and words in why


def test_leaf_published_as_ca_is_a_tls_error(emulator, tmp_path):
    emulator.set_attributes(
        SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_CA_CERT=b64(make_cert(ca=False))
    )
    found = found_by(emulator, tmp_path)
    assert [p.name for p in found.problems] == ["tls_error"] and "leaf" in found.problems[0].message


# --------------------------------------------------------------------------- 3. FL_DATA_DIR


@pytest.mark.parametrize(
    "path",
    [
        "/", "/etc", "/etc/fl", "/usr/lib/x", "/bin", "/sbin/x", "/lib64/x", "/boot/x", "/root",
        "/root/data", "/root/.ssh", "/home/ubuntu/.ssh", "/home/ubuntu", "/proc/1/root", "/sys/x",
        "/dev/shm/x", "/run/x", "/var/run/docker.sock", "/var/lib/docker/volumes/x",
        "/var/lib/containerd/x", "/var/lib/fl-agent/x", "/opt", "/home", "/tmp", "/var",
        "/opt/a/../../etc", "/opt/./x", "/opt/x\x1b[2J", "/opt/x\ny", "/opt/" + "d" * 5000,
        "/opt/" + "/".join(["d" * 200] * 6), "relative/x", "/opt/x:rw", "/opt/x,y",
    ],
)  # fmt: skip
def test_data_dir_the_agent_may_not_own_is_refused(path):
    result = build_config({"FL_DATA_DIR": path})
    assert [(p.name, p.subject) for p in result.problems] == [("invalid_value", "FL_DATA_DIR")]
    assert data_dir_problem(path) is not None


@pytest.mark.parametrize(
    "path", ["/opt/flower/data", "/data", "/srv/flower", "/home/ubuntu/flower", "/mnt/disk/fl/"]
)
def test_data_dir_of_its_own_is_accepted(path):
    result = build_config({"FL_DATA_DIR": path})
    assert result.ok and result.config.data_dir == path.rstrip("/")


def test_refused_data_dir_exits_2_without_traceback(tmp_path):
    ctx = tmp_path / "context.sh"
    ctx.write_text(render_context({"FL_DATA_DIR": "/opt/" + "d" * 5000}))
    for args in (("context",), ("boot", "--dry-run", "--discovery-attempts", "1")):
        result = run_agent(*args, "--context-file", str(ctx), root=tmp_path / "root")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "FL_DATA_DIR" in result.stdout + result.stderr


# --------------------------------------------------------------------------- 4. the token


@pytest.mark.parametrize("token", ["tok\nen-SECRET", "tok\x1bSECRET", "tökenSECRET", "tok\x00SEC"])
def test_token_outside_printable_ascii_is_a_named_error_that_does_not_echo_it(token):
    platform = read_platform({"ONEGATE_ENDPOINT": "http://h:5030", "VMID": "1"}, Secret(token))
    assert [(p.name, p.subject) for p in platform.problems] == [("invalid_value", "ONEGATE_TOKEN")]
    assert "SECRET" not in str(platform.problems) and "SEC" not in str(platform.problems[0])
    assert platform.token is None  # never into an HTTP header


def test_token_with_a_line_break_ends_in_exit_2_and_stays_hidden(tmp_path):
    ctx = tmp_path / "context.sh"
    ctx.write_text(
        render_context(
            {"ONEGATE_ENDPOINT": "http://127.0.0.1:9", "VMID": "7", "ONEGATE_TOKEN": "a\nSECRET"}
        )
    )
    for args in (("context",), ("boot", "--dry-run", "--discovery-attempts", "1")):
        result = run_agent(*args, "--context-file", str(ctx), root=tmp_path / "root")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "SECRET" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


def test_context_raw_masks_the_token(tmp_path):
    ctx = tmp_path / "context.sh"
    ctx.write_text(render_context({"ONEGATE_TOKEN": "tok-SECRET-123", "A": "1"}))
    for extra in ((), ("--json",)):
        result = run_agent("context", "--raw", "--context-file", str(ctx), *extra)
        assert result.returncode == 0 and "tok-SECRET-123" not in result.stdout
        assert "ONEGATE_TOKEN" in result.stdout and "***" in result.stdout


# --------------------------------------------------------------------------- 5. named errors


def test_flower_version_with_thousands_of_digits():
    result = build_config({"FLOWER_VERSION": "1." + "4" * 5000 + ".0"})
    assert [(p.name, p.subject) for p in result.problems] == [("invalid_value", "FLOWER_VERSION")]
    assert flower.parse_version("1." + "9" * 5000 + ".0") is None


def test_vmid_with_non_ascii_digits():
    platform = read_platform({"VMID": "\u0661\u0662"}, None)  # Arabic-Indic 12
    assert [(p.name, p.subject) for p in platform.problems] == [("invalid_value", "VMID")]
    assert platform.vmid is None


@contextlib.contextmanager
def read_only(path):
    """A really read-only directory: a read-only tmpfs as root (root ignores modes), else 0555."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=True
        )
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


def test_read_only_run_is_a_failed_boot_not_a_traceback(tmp_path):
    ctx = tmp_path / "context.sh"
    ctx.write_text(render_context({"FL_SUPERLINK_ADDRESS": "127.0.0.1:9092"}))
    root = tmp_path / "root"
    with read_only(root / "run"):
        result = run_agent("boot", "--context-file", str(ctx), "--json", root=root)
    assert "Traceback" not in result.stderr, result.stderr
    record = json.loads(result.stdout)
    assert result.returncode == 1 and record["problems"][0]["name"] == "run_dir_unwritable"


@pytest.mark.docker
@pytest.mark.parametrize("kind", ["read-only", "socket"])
def test_unusable_data_dir_is_a_failed_boot_not_a_traceback(
    docker_client, standin_images, no_supernode, tmp_path, kind
):
    ctx = tmp_path / "context.sh"
    ctx.write_text(
        render_context(
            {
                "FL_SUPERLINK_ADDRESS": "127.0.0.1:9092",
                "FL_TLS_ENABLED": "NO",
                "FL_NODE_CONFIG": "partition-id=0",
                "FL_GPU_ENABLED": "NO",
                "FL_SUPERNODE_IMAGE": standin_images["ok"],
                "FL_DATA_DIR": "/srv/flower/data",
            }
        )
    )
    root = tmp_path / "root"
    if kind == "socket":
        (root / "srv/flower").mkdir(parents=True)
        with socket.socket(socket.AF_UNIX) as listening:
            listening.bind(str(root / "srv/flower/data"))
            result = run_agent("boot", "--context-file", str(ctx), "--json", root=root, timeout=180)
    else:
        with read_only(root / "srv"):
            result = run_agent("boot", "--context-file", str(ctx), "--json", root=root, timeout=180)
    assert "Traceback" not in result.stderr, result.stderr
    record = json.loads(result.stdout)
    assert result.returncode == 1 and record["problems"][0]["name"] == "data_dir_unusable"


@pytest.mark.parametrize("runtimes", ['"x"', "[1, 2]", "7", "null"])
def test_daemon_json_whose_runtimes_is_not_an_object(tmp_path, runtimes):
    root = Root(tmp_path)
    root.docker_daemon_json.parent.mkdir(parents=True)
    text = f'{{"runtimes": {runtimes}, "debug": true}}\n'
    root.docker_daemon_json.write_text(text)
    data, problem = read_daemon_json(root)
    assert data is None and problem.name == "daemon_json_invalid"
    assert configure_daemon_json(root).name == "daemon_json_invalid"
    assert root.docker_daemon_json.read_text() == text


def test_context_file_that_never_ends_is_read_with_a_bound():
    result = run_agent("context", "--context-file", "/dev/zero", limit_bytes=1 << 30)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "context_too_large" in result.stderr or "more than the" in result.stderr


# --------------------------------------------------------------------------- 6. real grammars


@pytest.mark.parametrize("value", ["--k=1", "-x=1", "conf.toml", "k=1 #=x.toml", "k=1 #=x"])
def test_node_config_read_as_a_flag_or_a_file_is_refused(value):
    result = build_config({"FL_NODE_CONFIG": value})
    assert [(p.name, p.subject) for p in result.problems] == [("invalid_value", "FL_NODE_CONFIG")]


def test_node_config_is_one_argument():
    args = flower.supernode_args(
        version="1.42.0", superlink="h:1", insecure=True, root_certificates=None,
        isolation="subprocess", node_config='a=1 b="x y"', max_retries=0, max_wait_time=0,
    )  # fmt: skip
    assert '--node-config=a=1 b="x y"' in args and "--node-config" not in args


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("fl-agent/supernode:1.42.0", (None, "fl-agent/supernode", "1.42.0", None)),
        ("UP.example.com:5000/repo/name:tag", ("UP.example.com:5000", "repo/name", "tag", None)),
        ("Registry/repo", ("Registry", "repo", None, None)),
        ("localhost/x", ("localhost", "x", None, None)),
        (f"repo/name@{DIGEST}", (None, "repo/name", None, DIGEST)),
        (f"reg.io/repo:tag@{DIGEST}", ("reg.io", "repo", "tag", DIGEST)),
        ("a__b/c-d--e/f.g:T_1.x-y", (None, "a__b/c-d--e/f.g", "T_1.x-y", None)),
    ],
)  # fmt: skip
def test_image_reference_by_docker_grammar(text, parts):
    ref = parse_image_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == parts
    result = build_config({"FL_SUPERNODE_IMAGE": text})
    assert result.ok and result.config.image_reference == ref and str(ref) == text


def test_digest_is_pulled_as_a_digest():
    ref = build_config({"FL_SUPERNODE_IMAGE": f"reg.io/repo:tag@{DIGEST}"}).config.image_reference
    assert (ref.name, ref.pull_tag) == ("reg.io/repo", DIGEST)
    ref = build_config({"FL_SUPERNODE_IMAGE": "reg.io:5000/repo"}).config.image_reference
    assert (ref.name, ref.pull_tag) == ("reg.io:5000/repo", "latest")


@pytest.mark.parametrize(
    "text",
    [
        "--privileged/x", "../x", "./x", "UPPER/Case", "repo@sha256:abc", "a:b:c", "a//b",
        "-x", "x-", "a/" * 200 + "b", "\uff52\uff45\uff50\uff4f", "a" * 64,
        "ab" * 32, "repo:tag\n", "repo:" + "t" * 129, "re po",
    ],
)  # fmt: skip
def test_image_reference_docker_refuses_is_refused(text):
    assert parse_image_reference(text) is None
    assert not build_config({"FL_SUPERNODE_IMAGE": text}).ok or text.strip() != text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FL_MAX_RETRIES", "\u0663"),
        ("FL_MAX_WAIT_TIME", "1\u0660"),
        ("FL_CUDA_VISIBLE_DEVICES", "\u0661"),
        ("FL_CUDA_VISIBLE_DEVICES", "MIG-GPU-12345678-1234-1234-1234-123456789abc/\u0661/0"),
        ("FL_SUPERLINK_ADDRESS", "host:\u0669\u0660\u0669\u0662"),
        ("FL_SUPERLINK_ADDRESS", "\u0661.2.3.4:9092"),
        ("FLOWER_VERSION", "1.\u0664\u0662.0"),
        ("FLOWER_VERSION", "1.42.0\n"[:-1] + "\u0660"),
    ],
)
def test_digits_are_ascii_digits(name, value):
    result = build_config({name: value})
    assert [(p.name, p.subject) for p in result.problems] == [("invalid_value", name)]


@pytest.mark.parametrize(
    ("user", "kept"),
    [
        ("0000", False), ("+0", False), ("root", False), ("root:root", False), ("0:0", False),
        ("", False), (None, False), ("app", False), ("49999:0", False), ("0:49999", False),
        ("\u0664\u0669", False), ("49999", True), ("1000:1000", True), ("49999:49999", True),
    ],
)  # fmt: skip
def test_container_user_is_a_numeric_non_zero_uid_else_49999(user, kept):
    assert numeric_non_root(user) is kept
    config = build_config({"FL_SUPERLINK_ADDRESS": "h:1"}).config
    image = ImageFacts(config.supernode_image, True, user)
    plan = make_plan(config, PlanInputs(GpuVerdict("CPU_ONLY"), "h:1", "a=1", "/d", image))
    assert plan.spec.user == (None if kept else "49999:49999")


@pytest.mark.parametrize("text", ["\u00b2", "\u0661:\u0662", "1:\uff12"])
def test_operator_ranges_are_ascii_digits(text):
    from agent.one.connection import OneInputError
    from agent.one.service import parse_range
    from agent.one.vmtemplate import _is_id

    with pytest.raises(OneInputError):
        parse_range(text)
    assert not _is_id(text)  # int('\u00b2') raises although '\u00b2'.isdigit()


def test_escape_controls():
    assert escape_controls("a\x1b[2Jb\x9b1m\u202ec\nd\x7f") == "a\\x1b[2Jb\\x9b1m\\u202ec\\nd\\x7f"
    assert escape_controls("é 漢字 ok\n", keep="\n") == "é 漢字 ok\n"


def test_control_characters_from_context_and_peers_are_escaped_in_human_output(emulator, tmp_path):
    ctx = my_context(emulator, tmp_path, X_NOTE="\x1b]0;pwned\x07\x9b2J")
    peer = requests.put(
        f"{emulator.endpoint}/vms/{ME}",
        data="FL_ERROR_BASE64=" + b64("\x1b[2Jall good\x1b[0m"),  # raw ESC: the server's 500
        headers={"X-ONEGATE-TOKEN": emulator.vms[PEER].token, "X-ONEGATE-VMID": str(PEER)},
        timeout=5,
    )
    assert peer.status_code == 200
    root = tmp_path / "root"
    for args in (("context", "--raw"), ("status", "--remote")):
        result = run_agent(*args, "--context-file", str(ctx), root=root)
        out = result.stdout + result.stderr
        assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out, out
        assert "Traceback" not in result.stderr
    status = run_agent("status", "--remote", "--context-file", str(ctx), root=root)
    assert "\\x1b[2Jall good" in status.stdout


# --------------------------------------------------------------------------- 8. the fuzzer

NAMES = [
    "FL_GPU_ENABLED", "FL_GPU_REQUIRED", "FL_CUDA_VISIBLE_DEVICES", "FL_GPU_MEMORY_FRACTION",
    "FL_SUPERLINK_ADDRESS", "FL_NODE_CONFIG", "FLOWER_VERSION", "FL_SUPERNODE_IMAGE",
    "FL_ISOLATION", "FL_LOG_LEVEL", "FL_MAX_RETRIES", "FL_MAX_WAIT_TIME", "FL_TLS_ENABLED",
    "FL_SSL_CA_CERT", "FL_TOOLKIT_INSTALL", "FL_DATA_DIR", "ONEGATE_ENDPOINT", "VMID",
    "REPORT_READY", "ONEAPP_FL_NODE_CONFIG", "ONEAPP_FLOWER_VERSION",
]  # fmt: skip
ATOMS = [
    "", " ", "\t", "\n", "\x1b", "\x00", "\x9b", "\u202e", "\u0661", "\uff11", "0", "9", "-", "--",
    ".", "..", "/", ":", "@", "=", "'", '"', "a", "Z", "é", "sha256:", ".toml", "[", "]", "%", "+",
    "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----",
]  # fmt: skip
SEEDS = [
    "YES", "NO", "AUTO", "all", "0,1", "1.42.0", "127.0.0.1:9092", "[::1]:9092", "/opt/flower/data",
    "partition-id=0 num-partitions=2", "reg.io:5000/repo/name:tag", f"repo@{DIGEST}", b64(CA1),
    "http://10.0.0.1:5030", "12", "0.5",
]  # fmt: skip


@st.composite
def hostile_value(draw) -> str:
    """Seeds, atoms and their long repeats (the shapes that make a backtracking check blow up)."""
    parts = draw(st.lists(st.one_of(st.sampled_from(ATOMS + SEEDS), st.text(max_size=12)),
                          max_size=8))  # fmt: skip
    text = "".join(parts)
    if draw(st.booleans()):
        text = draw(st.sampled_from(SEEDS + ATOMS)) + text * draw(st.integers(1, 2000))
    return text[: draw(st.sampled_from((64, 4096, 70_000)))]


contexts = st.dictionaries(
    st.sampled_from(NAMES), hostile_value().map(lambda v: v.replace("\0", "")), max_size=8
)
FUZZ_TIME_S = 5.0
FUZZ_MEMORY = 100 * 2**20


def plan_context(variables: dict[str, str], token: str) -> None:
    """Render, parse, build the config and plan it, as `boot --dry-run` does without a machine;
    fail on any exception other than a named AgentError, on 5 s or on 100 MB."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        try:
            parsed = parse_context(render_context(variables).encode())
        except AgentError as exc:
            assert exc.problems[0].name
            return
        result = build_config(parsed)
        platform = read_platform(parsed, Secret(token))
        assert (result.config is None) == bool(result.problems)
        assert "SECRET-" not in str(result.problems) + str(platform.problems)
        if result.config is not None:
            verdict = GpuVerdict("CPU_ONLY")
            image = ImageFacts(result.config.supernode_image, True, "")
            inputs = PlanInputs(verdict, "127.0.0.1:9092", result.config.node_config, "/d", image)
            plan = make_plan(result.config, inputs)
            json.dumps(plan.to_dict())
            escape_controls(json.dumps(result.config.to_dict(), ensure_ascii=False))
            result.config.image_reference  # noqa: B018 - parses or raises
        if result.config is not None and result.config.ssl_ca_cert:
            tls.check_ca(result.config.ssl_ca_cert)
    finally:
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < FUZZ_TIME_S, f"{elapsed:.1f} s for {sorted(variables)}"
    assert peak < FUZZ_MEMORY, f"{peak / 2**20:.0f} MB for {sorted(variables)}"


FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(
    max_examples=int(os.environ.get("FL_FUZZ_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
tokens = st.one_of(st.just("tok-123"), st.text(max_size=20).map(lambda t: "SECRET-" + t))


@FAST
@given(contexts, tokens)
def test_fuzz_context_no_traceback_bounded_time_and_memory(variables, token):
    plan_context(variables, token)


@pytest.mark.slow
@LONG
@given(contexts, tokens)
def test_fuzz_context_long(variables, token):
    plan_context(variables, token)
