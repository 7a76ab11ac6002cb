"""agent/flower.py against the real --help texts of 1.25.0 and 1.42.0.

The texts were printed by the commands inside flwr/supernode:<version>
(scripts/record_flower_help.sh) and are kept under tests/fixtures/flower-help/. Every flag the
agent emits must be one that release documents; the other release's argv must not pass, which
shows the check can fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent import flower

HELP = Path(__file__).parent / "fixtures" / "flower-help"
VERSIONS = ("1.25.0", "1.42.0")
OTHER = {"1.25.0": "1.42.0", "1.42.0": "1.25.0"}
TLS = flower.ServerTlsPaths("/tls/ca.crt", "/tls/server.crt", "/tls/server.key")


def help_flags(version: str, command: str) -> set[str]:
    text = (HELP / version / f"{command}.txt").read_text()
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


def flags(argv: list[str]) -> set[str]:
    """The flag names, also of the `--flag=value` form (one argument: see flower.py)."""
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def superlink(version: str) -> list[str]:
    return flower.superlink_args(version=version, tls=TLS, state_dir="/s", node_auth=True)


def supernode(version: str) -> list[str]:
    return flower.supernode_args(
        version=version,
        superlink=flower.fleet_endpoint(version, "10.0.0.5"),
        insecure=False,
        root_certificates="/ca.crt",
        isolation="process",
        node_config="partition-id=0",
        max_retries=3,
        max_wait_time=30,
        auth_private_key="/key/node.key",
    )


BUILDERS = {
    "flower-superlink": superlink,
    "flower-supernode": supernode,
    "flower-superexec": lambda v: flower.superexec_args(version=v),
    "flwr-supernode-register": lambda v: flower.register_node_args(v, "/k.pub", "/cli"),
    "flwr-supernode-unregister": lambda v: flower.unregister_node_args(v, 7, "/cli"),
}


@pytest.mark.parametrize("command", sorted(BUILDERS))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_flag_is_in_that_releases_help(version, command):
    emitted = flags(BUILDERS[command](version))
    assert emitted
    assert emitted <= help_flags(version, command), emitted - help_flags(version, command)


@pytest.mark.parametrize("command", ["flower-superlink", "flower-supernode", "flower-superexec"])
@pytest.mark.parametrize("version", VERSIONS)
def test_the_other_releases_argv_is_not_in_this_help(version, command):
    assert flags(BUILDERS[command](OTHER[version])) - help_flags(version, command)


@pytest.mark.parametrize("version", VERSIONS)
def test_recorded_help_is_that_release(version):
    assert (HELP / version / "version.txt").read_text().strip() == f"Flower version: {version}"


@pytest.mark.parametrize(
    ("version", "positionals"),
    [("1.25.0", "PUBLIC_KEY [APP] [FEDERATION]"), ("1.42.0", "PUBLIC_KEY [SUPERLINK]")],
)
def test_register_positionals_follow_the_usage_line(version, positionals):
    usage = (HELP / version / "flwr-supernode-register.txt").read_text()
    assert f"register [OPTIONS] {positionals}" in usage
    argv = flower.register_node_args(version, "/k.pub", "/cli")
    assert argv[:3] == ["supernode", "register", "/k.pub"]
    assert len(argv[3 : argv.index("--format")]) == positionals.count("[")


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1.25.0", ["--serverappio-api-address", "0.0.0.0:9091", "--fleet-api-address"]),
        ("1.39.0", ["--host", "0.0.0.0", "--port", "8000", "--fleet-api-address"]),
        (
            "1.42.0",
            ["--host", "0.0.0.0", "--port", "8000", "--disable-runtime-dependency-installation"],
        ),
    ],
)
def test_superlink_binds_every_api_outside_the_vm(version, expected):
    args = superlink(version)
    start = args.index(expected[0])
    assert args[start : start + len(expected)] == expected
    assert args[args.index("--database") + 1] == "/s/superlink.db"
    assert ("--storage-dir" in args) is (version == "1.25.0")
    assert "--enable-supernode-auth" in args
    assert ("--control-api-address" in args) is (version == "1.25.0")


def test_node_auth_without_tls_is_refused():
    with pytest.raises(ValueError, match="TLS"):
        flower.superlink_args(version="1.42.0", tls=None, state_dir="/d", node_auth=True)
    assert flower.superlink_args(version="1.42.0", tls=None, state_dir="/d", node_auth=False)[
        :1
    ] == ["--insecure"]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (
            "1.25.0",
            ["--appio-api-address", "127.0.0.1:9094", "--insecure", "--plugin-type", "clientapp"],
        ),
        (
            "1.36.0",
            ["--runtime-api-address", "127.0.0.1:9094", "--insecure", "--plugin-type", "clientapp"],
        ),
        ("1.38.0", ["--runtime-api-address", "127.0.0.1:9094", "--insecure"]),
        ("1.42.0", ["--runtime-api-address", "127.0.0.1:9094", "--insecure"]),
    ],
)
def test_superexec_for_clientapps_per_release(version, expected):
    assert flower.superexec_args(version=version) == expected


@pytest.mark.parametrize(
    ("version", "host", "endpoint"),
    [
        ("1.25.0", "10.0.0.5", "10.0.0.5:9092"),
        ("1.39.1", "sl.example", "sl.example:9092"),
        ("1.40.0", "10.0.0.5", "10.0.0.5:8000"),
        ("1.42.0", "fd00::5", "[fd00::5]:8000"),
    ],
)
def test_fleet_endpoint(version, host, endpoint):
    assert flower.fleet_endpoint(version, host) == endpoint


def test_every_row_has_a_node_auth_mechanism():
    assert {r.node_auth for r in flower.RELEASES} == {"register"}


@pytest.mark.parametrize(
    ("stdout", "node_id"),
    [
        ('{\n  "success": true,\n  "node-id": 17219575314766861116\n}', 17219575314766861116),
        ('{"success": false, "error-message": "Read-only file system"}', None),
        ("not json", None),
        ("[1, 2]", None),
        ('{"success": true, "node-id": true}', None),
        ('{"success": true, "node-id": -5}', None),
        ('{"success": true, "node-id": 0}', None),
        ('{"success": true, "node-id": 3.0}', None),
        ('{"success": true, "node-id": "12"}', None),
        ('{"success": true, "node-id": 18446744073709551616}', None),
        ('{"success": true, "node-id": 18446744073709551615}', 18446744073709551615),
    ],
)
def test_registered_node_id(stdout, node_id):
    assert flower.registered_node_id(stdout) == node_id


@pytest.mark.parametrize(
    ("version", "filename", "section"),
    [("1.25.0", "pyproject.toml", "[tool.flwr.federations.fl-agent]"),
     ("1.42.0", "config.toml", "[superlink.fl-agent]")],
)  # fmt: skip
def test_cli_connection_file_per_release(version, filename, section):
    import tomllib

    name, text = flower.cli_connection(version, "127.0.0.1:8000", "/tls/ca.crt")
    assert (name, section in text) == (filename, True)
    tomllib.loads(text)
    assert "insecure = true" in flower.cli_connection(version, "127.0.0.1:8000", None)[1]
