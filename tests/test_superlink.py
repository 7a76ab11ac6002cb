"""The superlink role without a Docker engine: its plan and spec, what it publishes, the SANs
and reuse of its certificate, the operator's material in the config, the registration pass
over a `flwr` that answers as Flower does, the watch's role-fitting tick, and a dry run that
changes nothing."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import flower, nodeauth, registration, tls
from agent.boot import BootOptions, boot
from agent.config import Config, build_config
from agent.context import Secret, context_hostname, nic_addresses, render_context
from agent.onegate import ATTRIBUTES, state_report
from agent.outcome import BootState, ExitCode, Mode
from agent.paths import Root
from agent.plan import ActionKind, ImageFacts
from agent.superlink import (
    AGENT_TLS,
    CERT_ENV,
    NO_TLS,
    STATE_MOUNT,
    SuperlinkInputs,
    TlsMaterial,
    make_superlink_plan,
    published,
    superlink_spec,
)
from agent.superlink_boot import observe_tls
from agent.watch import Watch, status_attributes
from tests.test_boot_pipeline import snapshot

IMAGE = "fl-agent/supernode:1.42.0"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def config(**changes) -> Config:
    return Config(role="superlink", supernode_image=IMAGE, **changes)


def inputs(material: TlsMaterial | None = None, **changes) -> SuperlinkInputs:
    values = dict(
        image=ImageFacts(IMAGE, True, "app"),
        ips=("10.0.0.5", "2001:db8::5"),
        hostname="sl.example",
        tls=material or TlsMaterial(AGENT_TLS, "/r/tls", "ab" * 32, "valid", CA_PEM),
        state_dir_host="/r/var/lib/fl-agent/superlink",
        control_dir_host="/r/var/lib/fl-agent/superlink-control",
    )
    return SuperlinkInputs(**{**values, **changes})


# --------------------------------------------------------------------------- plan and spec


def test_the_spec_is_a_hardened_superlink_with_tls_auth_and_a_persistent_database():
    spec = superlink_spec(config(), inputs())
    assert spec.name == "flower-superlink" and spec.entrypoint == ("flower-superlink",)
    assert (spec.user, spec.cap_drop, spec.network_mode) == ("49999:49999", ("ALL",), "host")
    assert spec.security_opt == ("no-new-privileges:true",)
    assert spec.restart_policy == "unless-stopped"
    assert spec.mode == Mode.CPU and spec.runtime == "runc"
    assert spec.gpu_count is None and not spec.gpu_device_ids
    args = list(spec.command)
    assert args[args.index("--database") + 1] == f"{STATE_MOUNT}/superlink.db"
    assert "--enable-supernode-auth" in args and "--insecure" not in args
    assert args[args.index("--ssl-keyfile") + 1] == "/fl-agent/tls/server.key"
    binds = {b.target: (b.source, b.mode) for b in spec.binds}
    assert binds[STATE_MOUNT] == ("/r/var/lib/fl-agent/superlink", "rw")
    assert binds["/fl-agent/tls/server.key"] == ("/r/tls/server.key", "ro")
    assert not any(b.source.endswith("ca.key") for b in spec.binds)  # the CA key stays out
    assert all(b.mode == "ro" for b in spec.binds if b.target != STATE_MOUNT)


def test_the_spec_changes_exactly_when_the_server_certificate_does():
    first = superlink_spec(config(), inputs())
    again = superlink_spec(config(), inputs())
    renewed = inputs(TlsMaterial(AGENT_TLS, "/r/tls", "cd" * 32, "renewed", CA_PEM))
    assert first.spec_hash == again.spec_hash
    assert superlink_spec(config(), renewed).spec_hash != first.spec_hash
    assert dict(first.environment)[CERT_ENV] == "ab" * 32


def test_the_actions_come_in_order_and_registration_only_with_authentication():
    plan = make_superlink_plan(config(), inputs(image=ImageFacts(IMAGE, False)))
    kinds = [a.kind for a in plan.actions]
    assert kinds == [
        ActionKind.PULL_IMAGE,
        ActionKind.ENSURE_TLS,
        ActionKind.PREPARE_STATE_DIR,
        ActionKind.OPEN_FIREWALL,
        ActionKind.CONVERGE,
        ActionKind.WAIT_SERVING,
        ActionKind.REGISTER_NODES,
        ActionKind.RECORD,
    ]
    assert plan.state == BootState.RUNNING
    no_auth = make_superlink_plan(config(node_auth=False), inputs())
    assert not no_auth.has(ActionKind.REGISTER_NODES) and not no_auth.has(ActionKind.PULL_IMAGE)
    assert "--enable-supernode-auth" not in no_auth.spec.command


def test_supernode_containers_left_by_a_role_change_are_removed_before_the_superlink_starts():
    names = ("flower-supernode", "flower-superexec")
    plan = make_superlink_plan(config(), inputs(other_role=names))
    kinds = [(a.kind, a.target) for a in plan.actions]
    converge = kinds.index((ActionKind.CONVERGE, plan.spec.name))
    assert [kinds.index((ActionKind.REMOVE_CONTAINER, n)) < converge for n in names] == [1, 1]


def test_without_tls_the_superlink_is_insecure_without_authentication_and_says_so():
    plan = make_superlink_plan(config(tls_enabled=False), inputs(TlsMaterial(NO_TLS)))
    assert "--insecure" in plan.spec.command
    assert "--enable-supernode-auth" not in plan.spec.command
    assert not plan.has(ActionKind.ENSURE_TLS) and not plan.has(ActionKind.REGISTER_NODES)
    assert "insecure" in plan.reason and "no SuperNode authentication" in plan.reason
    assert not any(b.target.startswith("/fl-agent/tls") for b in plan.spec.binds)


def test_a_blocking_problem_plans_no_spec():
    from agent.errors import Problem

    refused = Problem("tls_operator_material_invalid", "FL_SSL_CERT", "expired", "renew it")
    plan = make_superlink_plan(config(), inputs(blocking=(refused,)))
    assert plan.spec is None and plan.state == BootState.FAILED
    assert [a.kind for a in plan.actions] == [ActionKind.RECORD]


@pytest.mark.parametrize(
    ("version", "ips", "endpoint"),
    [
        ("1.42.0", ("10.0.0.5",), "10.0.0.5:8000"),
        ("1.25.0", ("10.0.0.5",), "10.0.0.5:9092"),
        ("1.39.1", ("2001:db8::5", "10.0.0.5"), "[2001:db8::5]:9092"),
        ("1.42.0", (), "127.0.0.1:8000"),
    ],
)
def test_the_published_endpoint_is_the_fleet_api_of_the_version_on_the_first_nic(
    version, ips, endpoint
):
    values = published(config(flower_version=version), inputs(ips=ips))
    assert values["FL_ENDPOINT"] == endpoint
    assert values["FL_VERSION"] == version
    assert base64.b64decode(values["FL_CA_CERT"]).decode() == CA_PEM
    assert values["FL_TLS"] == "YES"


def test_the_published_attributes_are_in_the_table_and_no_tls_deletes_the_ca():
    values = published(config(tls_enabled=False), inputs(TlsMaterial(NO_TLS)))
    assert values["FL_TLS"] == "NO" and values["FL_CA_CERT"] == ""
    values["FL_NODES_REGISTERED"] = "2"
    assert set(values) <= set(ATTRIBUTES)
    updates, _ = state_report("RUNNING", facts=values, ready=True)
    assert updates["READY"] == "YES"


# --------------------------------------------------------------------------- TLS on disk


def test_sans_are_every_nic_ip_the_hostname_and_loopback_and_a_reused_cert_keeps_its_print(
    tmp_path,
):
    root = Root(tmp_path)
    ips = nic_addresses({"ETH0_IP": "10.0.0.5", "ETH1_IP6": "2001:db8::5", "ETH1_IP": "x"})
    assert ips == ("10.0.0.5", "2001:db8::5")
    first, problems = observe_tls(root, config(), ips, "sl.example")
    assert not problems and first.fingerprint is None and first.ca_pem is None
    tls.ensure_server_tls(tls.tls_files(root), tls.wanted_sans(ips, "sl.example"))
    facts = tls.facts_on_disk(tls.tls_files(root))
    assert facts.sans == {"IP:10.0.0.5", "IP:2001:db8::5", "IP:127.0.0.1", "DNS:sl.example"}
    kept, _ = observe_tls(root, config(), ips, "sl.example")
    on_disk = tls.tls_files(root).server_cert.read_text()
    assert kept.fingerprint == tls.fingerprints(on_disk)[0] and "SANs match" in kept.reason
    moved, _ = observe_tls(root, config(), ("10.0.0.9",), "sl.example")
    assert moved.fingerprint is None and "SANs changed" in moved.reason


def test_hostname_and_addresses_come_from_the_context():
    assert context_hostname({"SET_HOSTNAME": "SL-1.Example"}) == "sl-1.example"
    assert context_hostname({"SET_HOSTNAME": "not a name"}) is None
    order = {"ETH1_IP": "10.0.1.1", "ETH0_IP": "10.0.0.1", "ETH0_ALIAS0_IP": "10.9.9.9"}
    assert nic_addresses(order) == ("10.0.0.1", "10.0.1.1")


def _operator_material(tmp_path: Path) -> tuple[str, str, str]:
    files = tls.TlsFiles(tmp_path / "op")
    tls.ensure_server_tls(files, tls.wanted_sans((), None))
    return tuple(p.read_text() for p in (files.ca_cert, files.server_cert, files.server_key))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_operators_material_is_taken_checked_and_its_key_never_shown(tmp_path):
    ca, cert, key = _operator_material(tmp_path)
    variables = {"FL_ROLE": "superlink", "FL_SSL_CA_CERT": b64(ca)}
    result = build_config({**variables, "FL_SSL_CERT": b64(cert), "FL_SSL_KEY": b64(key)})
    assert result.ok and result.config.ssl_key == Secret(key)
    assert result.config.to_dict()["ssl_key"] == "***"
    assert key not in repr(result.config) and "PRIVATE" not in json.dumps(result.config.to_dict())
    material, problems = observe_tls(Root(tmp_path / "root"), result.config, (), None)
    assert not problems and material.source == "operator" and material.ca_pem == ca
    assert material.fingerprint == tls.fingerprints(cert)[0]
    wrong = build_config({**variables, "FL_SSL_CERT": b64(cert), "FL_SSL_KEY": b64(ca)})
    assert [p.subject for p in wrong.problems] == ["FL_SSL_KEY"]
    assert b64(ca) not in wrong.problems[0].message
    alone = build_config({**variables, "FL_SSL_CERT": b64(cert)})
    assert [p.name for p in alone.problems] == ["conflicting_values"]


def test_an_operator_ca_the_supernodes_would_refuse_is_refused_on_the_superlink(tmp_path):
    """A leaf certificate given as FL_SSL_CA_CERT: every SuperNode's discovery would refuse it
    (not CA:TRUE), so the SuperLink says so once instead of publishing it."""
    _, cert, key = _operator_material(tmp_path)
    values = {"FL_ROLE": "superlink", "FL_SSL_CA_CERT": b64(cert), "FL_SSL_CERT": b64(cert)}
    result = build_config({**values, "FL_SSL_KEY": b64(key)})
    _, problems = observe_tls(Root(tmp_path / "root"), result.config, (), None)
    assert [p.name for p in problems] == ["tls_operator_material_invalid"]
    assert "FL_SSL_CA_CERT" in problems[0].message


UNKNOWN_ALGORITHM_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgkGCCqGSM49AwEHBG0wawIBAQQg3Pf6zyhF6m48Gx8pnD+eOG29RDuR
ie5t8myCN5NeGO6hRANCAATMGifmK/NpLLQYqo4a/FhT2lbt6+tovFss3liRPMcD2i1MCPnVjZ/G
BWanY0FwuaqmfgwpSZ+A2Ja3beIAJD4B
-----END PRIVATE KEY-----
"""
"""PKCS#8 whose algorithm OID (1.2.840.10045.2.9) no library knows: `cryptography` raises
UnsupportedAlgorithm, neither a ValueError nor a TypeError."""


def test_a_key_of_an_unknown_algorithm_is_a_problem_not_a_traceback(tmp_path):
    ca, cert, _ = _operator_material(tmp_path)
    variables = {"FL_ROLE": "superlink", "FL_SSL_CA_CERT": b64(ca), "FL_SSL_CERT": b64(cert)}
    result = build_config({**variables, "FL_SSL_KEY": b64(UNKNOWN_ALGORITHM_KEY)})
    assert result.ok
    _, problems = observe_tls(Root(tmp_path / "root"), result.config, (), None)
    assert [p.name for p in problems] == ["tls_operator_material_invalid"]
    assert "UnsupportedAlgorithm" in problems[0].message
    assert "MIGHAgEA" not in problems[0].message


def test_context_raw_masks_the_operators_key(tmp_path):
    ca, cert, key = _operator_material(tmp_path)
    ctx = tmp_path / "context.sh"
    values = {"FL_ROLE": "superlink", "FL_SSL_CA_CERT": b64(ca), "FL_SSL_CERT": b64(cert)}
    ctx.write_text(render_context({**values, "FL_SSL_KEY": b64(key)}))
    env = {**os.environ, "FL_AGENT_ROOT": str(tmp_path / "root")}
    for extra in ((), ("--json",)):
        argv = [sys.executable, "-m", "agent", "context", "--context-file", str(ctx), "--raw"]
        shown = subprocess.run([*argv, *extra], capture_output=True, text=True, env=env)
        assert shown.returncode == 0, shown.stderr
        assert b64(key)[:40] not in shown.stdout + shown.stderr
        assert "FL_SSL_KEY" in shown.stdout


# --------------------------------------------------------------------------- registration


class FakeFlwr:
    """Answers `flwr supernode register/unregister --format json` as Flower 1.42 prints it."""

    def __init__(
        self, root: Root, fail: frozenset[str] = frozenset(), fail_unregister: bool = False
    ) -> None:
        self.root, self.fail, self.next_id, self.calls = root, fail, 100, []
        self.fail_unregister = fail_unregister

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        if argv[1] == "register":
            name = argv[2].rsplit("/", 1)[1]
            key = (self.root.path(registration.CONTROL_DIR) / "keys" / name).read_text().strip()
            if key in self.fail:
                return '{"success": false, "error-message": "refused"}'
            self.next_id += 1
            return f'Loading...\n{{"success": true, "node-id": {self.next_id}}}\n'
        if self.fail_unregister:
            return '{"success": false, "error-message": "Control API unavailable"}'
        return '{\n  "success": true\n}'


def service(*members: tuple[str, str, str | None]) -> dict:
    """GET /service?extended: (role, vm id, FL_NODE_PUBLIC_KEY) per VM."""
    roles: dict[str, list] = {}
    for role, vm_id, key in members:
        template = {"FL_NODE_PUBLIC_KEY": key} if key else {}
        node = {"vm_info": {"VM": {"ID": vm_id, "USER_TEMPLATE": template}}}
        roles.setdefault(role, []).append(node)
    return {"SERVICE": {"roles": [{"name": n, "nodes": v} for n, v in roles.items()]}}


def keys(tmp_path: Path, *names: str) -> list[str]:
    return [nodeauth.ensure_node_key(tmp_path / "keys" / n).public_openssh for n in names]


def test_registration_registers_the_roles_keys_only_and_unregisters_vms_that_left(tmp_path):
    root = Root(tmp_path / "root")
    a, b, outsider = keys(tmp_path, "a", "b", "outsider")
    flwr = FakeFlwr(root)
    doc = service(("superlink", "1", outsider), ("supernode", "2", a), ("supernode", "3", b))
    first = registration.apply_registration(
        root, flwr, "1.42.0", nodeauth.service_node_keys(doc), registration.read_registry(root)
    )
    assert first.count == 2 and sorted(first.added) == [101, 102] and not first.problems
    assert outsider not in first.registered
    assert registration.registry_path(root).stat().st_mode & 0o777 == 0o600
    assert not list((root.path(registration.CONTROL_DIR) / "keys").iterdir())  # handed, removed
    left = service(("supernode", "2", a), ("supernode", "4", "ssh-rsa AAAA not-ec"))
    second = registration.apply_registration(
        root, flwr, "1.42.0", nodeauth.service_node_keys(left), registration.read_registry(root)
    )
    assert second.registered == {a: first.registered[a]} and second.removed == (
        first.registered[b],
    )
    assert [p.name for p in second.problems] == ["node_key_refused"]
    assert flwr.calls[-1][:3] == ["supernode", "unregister", str(first.registered[b])]
    assert registration.read_registry(root) == second.registered


def test_a_refused_registration_is_a_problem_and_tried_again_next_pass(tmp_path):
    root = Root(tmp_path / "root")
    (a,) = keys(tmp_path, "a")
    wanted = nodeauth.service_node_keys(service(("supernode", "2", a)))
    refused = registration.apply_registration(
        root, FakeFlwr(root, frozenset({a})), "1.42.0", wanted, {}
    )
    assert refused.count == 0 and [p.name for p in refused.problems] == ["node_registration_failed"]
    assert a not in json.dumps([p.to_dict() for p in refused.problems])  # named by a hash
    again = registration.apply_registration(root, FakeFlwr(root), "1.42.0", wanted, {})
    assert again.count == 1


def test_a_pass_past_its_budget_stops_starting_flwr_calls(tmp_path, monkeypatch):
    root = Root(tmp_path / "root")
    (a,) = keys(tmp_path, "a")
    wanted = nodeauth.service_node_keys(service(("supernode", "2", a)))
    monkeypatch.setattr(registration, "PASS_BUDGET_S", -1.0)
    flwr = FakeFlwr(root)
    cut = registration.apply_registration(root, flwr, "1.42.0", wanted, {})
    assert flwr.calls == [] and cut.count == 0
    assert "cut short" in cut.problems[0].message


def test_a_failed_unregistration_keeps_the_node_in_the_registry(tmp_path):
    """Forgetting a node Flower still has registered would leave it admitted for good."""
    root = Root(tmp_path / "root")
    (a,) = keys(tmp_path, "a")
    registration.write_registry(root, {a: 7})
    flwr = FakeFlwr(root, fail_unregister=True)
    gone = nodeauth.service_node_keys(service())
    kept = registration.apply_registration(root, flwr, "1.42.0", gone, {a: 7})
    assert flwr.calls and flwr.calls[0][:3] == ["supernode", "unregister", "7"]
    assert kept.registered == {a: 7} and kept.removed == ()
    assert [p.name for p in kept.problems] == ["node_registration_failed"]
    assert registration.read_registry(root) == {a: 7}


def test_the_1_25_cli_names_its_app_directory():
    argv = flower.register_node_args("1.25.0", "/k.pub", registration.CLI_HOME)
    assert argv[3:5] == [registration.CLI_HOME, flower.CLI_CONNECTION]


def test_an_unreadable_service_changes_nothing(tmp_path):
    from agent.errors import AgentError, Problem

    class Down:
        def get_service(self, *, extended: bool = False):
            raise AgentError(Problem("onegate_unreachable", "OneGate", "down", "wait"))

    root = Root(tmp_path / "root")
    key = nodeauth.ensure_node_key(tmp_path / "key").public_openssh
    registration.write_registry(root, {key: 7})
    assert registration.read_registry(root) == {key: 7}
    done = registration.sync(root, object(), Down(), "1.42.0")  # no engine call may happen
    assert [p.name for p in done.problems] == ["onegate_unreachable"]
    assert done.registered == {key: 7} and done.removed == ()
    assert registration.read_registry(root) == {key: 7}


@pytest.mark.parametrize(
    ("output", "succeeded"),
    [
        ('{\n  "success": true,\n  "node-id": 42\n}\n', True),
        ('WARNING: {config} is deprecated\n{"success": true, "node-id": 42}', True),
        ('{"success": true} {"success": false, "error-message": "no"}', False),
        ('{"success": false, "error-message": "{key} exists"}', False),
        ("Traceback (most recent call last): {", False),
        ("", False),
        ('{"success": true, "node-id": Infinity}', True),
    ],
)
def test_flwrs_answer_is_its_last_json_object(output, succeeded):
    assert registration._succeeded(output) is succeeded
    node_id = flower.node_id_of(registration._answer(output))
    assert node_id == (42 if succeeded and "42" in output else None)


def test_a_registry_file_of_garbage_is_empty(tmp_path):
    root = Root(tmp_path)
    root.state_dir.mkdir(parents=True)
    registration.registry_path(root).write_text('{"not a key": 3, "x": "y"}')
    assert registration.read_registry(root) == {}


# --------------------------------------------------------------------------- the watch


def test_the_watch_on_the_superlink_role_reports_the_count_and_reads_no_gpu(tmp_path, monkeypatch):
    root = Root(tmp_path)
    root.state_dir.mkdir(parents=True)
    record = {"state": "RUNNING", "flower_version": "1.42.0", "superlink": {"node_auth": False}}
    (root.state_dir / "state.json").write_text(json.dumps(record))
    watch = Watch(root)
    monkeypatch.setattr(watch, "_read_health", lambda: pytest.fail("NVML read on a SuperLink"))
    state = watch.tick()
    assert state.nodes_registered is None and not state.problems
    assert "FL_NODES_REGISTERED" not in status_attributes(state)
    from dataclasses import replace

    assert status_attributes(replace(state, nodes_registered=3))["FL_NODES_REGISTERED"] == "3"


# --------------------------------------------------------------------------- dry run


def test_a_dry_run_changes_nothing_and_shows_the_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    root = tmp_path / "root"
    (root / "var/lib/fl-agent").mkdir(parents=True)
    context = tmp_path / "context.sh"
    context.write_text(
        render_context({"FL_ROLE": "superlink", "FL_SUPERNODE_IMAGE": IMAGE, "ETH0_IP": "10.0.0.5"})
    )
    before = snapshot(root)
    outcome = boot(Root(root), context, BootOptions(dry_run=True, docker_timeout_s=0.3))
    assert snapshot(root) == before
    assert outcome.exit_code == ExitCode.OK and outcome.record.dry_run
    assert outcome.record.superlink["published"]["FL_ENDPOINT"] == "10.0.0.5:8000"
    kinds = [a["kind"] for a in outcome.record.plan["actions"]]
    assert kinds[:2] == ["pull_image", "ensure_tls"] and "register_nodes" in kinds


def test_serving_is_a_bounded_tcp_connect():
    import socket

    from agent.superlink_boot import serving

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert serving(port, 1.0)
    assert not serving(port, 1.0)  # closed now: refused until the wait is over
