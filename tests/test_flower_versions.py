"""agent/flower.py: the per-release facts the SuperNode argv and the local setup depend on.

The real `flower-supernode` parsers of 1.25.0 and 1.42.0 check the same argv in
tests/test_e2e_flower.py.
"""

from __future__ import annotations

import pytest

from agent import flower

ARGS = {
    "superlink": "10.0.0.5:9092",
    "insecure": True,
    "root_certificates": None,
    "isolation": "subprocess",
    "node_config": None,
    "max_retries": 0,
    "max_wait_time": 0,
}


@pytest.mark.parametrize("version", ["1.25.0", "1.30.2", "1.34.0"])
def test_clientappio_address_flag_up_to_1_34(version):
    args = flower.supernode_args(version=version, **ARGS)
    assert args[args.index("--clientappio-api-address") + 1] == "127.0.0.1:9094"
    assert "--host" not in args


@pytest.mark.parametrize("version", ["1.35.0", "1.39.0", "1.42.0"])
def test_host_and_port_from_1_35(version):
    args = flower.supernode_args(version=version, clientappio_address="0.0.0.0:9095", **ARGS)
    assert args[args.index("--host") + 1 : args.index("--port") + 2] == [
        "0.0.0.0",
        "--port",
        "9095",
    ]
    assert "--clientappio-api-address" not in args


def test_version_outside_the_table_is_refused():
    with pytest.raises(ValueError, match="outside"):
        flower.supernode_args(version="1.24.0", **ARGS)


@pytest.mark.parametrize(
    ("version", "fleet", "control", "config_toml"),
    [("1.25.0", 9092, 9093, False), ("1.26.1", 9092, 9093, True), ("1.42.0", 8000, 8000, True)],
)
def test_release_facts(version, fleet, control, config_toml):
    release = flower.release_for(version)
    assert (release.fleet_port, release.control_port) == (fleet, control)
    assert release.cli_config_toml is config_toml


def test_every_supported_minor_has_exactly_one_row():
    for minor in range(flower.SUPPORTED_MIN[1], flower.SUPPORTED_MAX[1] + 1):
        rows = [r for r in flower.RELEASES if r.first <= (1, minor) <= r.last]
        assert len(rows) == 1, minor


@pytest.mark.parametrize(
    ("supernode", "superexec", "ok"),
    [
        ("1.30.0", "1.30.4", True),
        ("1.30.0", "1.31.0", False),
        ("1.42.0", "1.41.0", False),
        ("1.25.0", "1.26.0", True),
        ("1.42.0", "latest", False),
    ],
)
def test_superexec_must_share_major_minor_from_1_30(supernode, superexec, ok):
    assert flower.superexec_compatible(supernode, superexec) is ok
