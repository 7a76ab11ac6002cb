"""Version pairing with the SuperLink's FL_VERSION: every case of the pure decision."""

from __future__ import annotations

import pytest

from agent.config import build_config
from agent.pairing import newest_local, pair

LOCAL = ("1.25.0", "1.25.2", "1.42.0", "latest", "1.25.10", "1.30.1")


def config(**variables: str):
    result = build_config({"FL_SUPERLINK_ADDRESS": "10.0.0.1:9092", **variables})
    assert result.ok, result.problems
    return result.config


def test_nothing_published_changes_nothing() -> None:
    base = config()
    assert pair(base, None, LOCAL).config == base
    assert not base.flower_version_set and not base.supernode_image_set


def test_the_same_major_minor_keeps_the_baked_version() -> None:
    paired = pair(config(), "1.42.3", LOCAL)
    assert paired.config.flower_version == "1.42.0" and not paired.blocking and not paired.warning


def test_another_minor_takes_the_newest_local_patch_of_it() -> None:
    paired = pair(config(), "1.25.1", LOCAL)
    assert paired.config.flower_version == "1.25.10"
    assert paired.config.supernode_image == "fl-agent/supernode:1.25.10"
    assert paired.blocking is None and paired.warning is None


def test_no_local_image_of_that_minor_stops_with_the_fix() -> None:
    paired = pair(config(), "1.36.0", LOCAL)
    assert paired.blocking.name == "flower_version_unpaired"
    assert "1.36.0" in paired.blocking.message and "1.42.0" in paired.blocking.message
    assert (
        "FLOWER_VERSION" in paired.blocking.fix and "fl-agent/supernode:1.36" in paired.blocking.fix
    )


def test_a_published_version_outside_the_range_stops() -> None:
    paired = pair(config(), "1.99.0", ("1.99.0",))
    assert paired.blocking.name == "flower_version_unpaired"
    assert "1.25.0 to 1.42.x" in paired.blocking.fix


def test_flower_version_set_is_kept_and_a_mismatch_is_named() -> None:
    paired = pair(config(FLOWER_VERSION="1.25.0"), "1.42.0", LOCAL)
    assert paired.config.flower_version == "1.25.0" and paired.blocking is None
    assert paired.warning.name == "flower_version_mismatch"
    assert "1.25.0" in paired.warning.message and "1.42.0" in paired.warning.message
    same = pair(config(FLOWER_VERSION="1.42.0"), "1.42.5", LOCAL)
    assert same.warning is None


def test_an_explicit_image_is_the_operators_choice_checked_by_its_tag() -> None:
    tagged = pair(config(FL_SUPERNODE_IMAGE="reg:5000/me/node:1.25.2"), "1.42.0", ())
    assert tagged.config.flower_version == "1.25.2"
    assert tagged.config.supernode_image == "reg:5000/me/node:1.25.2"
    assert (
        tagged.warning.name == "flower_version_mismatch"
        and tagged.warning.subject == "FL_SUPERNODE_IMAGE"
    )
    untagged = pair(config(FL_SUPERNODE_IMAGE="me/node:gpu"), "1.30.2", ())
    assert untagged.config.flower_version == "1.30.2" and untagged.warning is None
    assert untagged.config.supernode_image == "me/node:gpu"


@pytest.mark.parametrize(
    "hostile",
    [
        "",
        "1.42",
        "1.42.0; rm -rf /",
        "\uff11.42.0",  # fullwidth digit one
        "1.42.0\n",
        "v1.42.0",
        "1.42.0" + "0" * 10_000,
        "99999.1.1",
        "1.42.0-rc1",
        "\x1b[31m1.42.0",
    ],
)
def test_a_hostile_fl_version_is_ignored_with_a_warning(hostile: str) -> None:
    base = config()
    paired = pair(base, hostile, LOCAL)
    assert paired.config == base and paired.blocking is None
    assert paired.warning.name == "superlink_version_invalid"
    assert len(paired.warning.message) < 200 and "\x1b" not in paired.warning.message


def test_newest_local_ignores_other_tags() -> None:
    assert (
        newest_local("1.25.0", ("latest", "1.25.9", "1.25.10", "1.26.99", "x1.25.11")) == "1.25.10"
    )
    assert newest_local("1.25.0", ("latest",)) is None
