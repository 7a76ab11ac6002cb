"""The OneFlow service template body and the FL_* user inputs table, without a server."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from agent.config import build_config
from agent.one import service
from agent.one.connection import OneInputError
from agent.one.inputs import SUPERNODE_INPUTS


def test_every_user_input_default_is_a_valid_agent_config():
    defaults = {i.name: i.default for i in SUPERNODE_INPUTS}
    assert build_config(defaults).ok


@pytest.mark.parametrize(
    ("name", "option"), [(i.name, o) for i in SUPERNODE_INPUTS for o in i.options]
)
def test_every_list_option_is_accepted_by_the_agent(name, option):
    result = build_config({name: option})
    assert result.ok, result.problems


def test_user_input_specs_have_five_fields():
    for i in SUPERNODE_INPUTS:
        fields = i.spec().split("|")
        assert len(fields) == 5 and fields[0] == "O" and fields[2]
        assert fields[1] in {"list", "text", "text64", "number", "number-float"}
        if fields[1] == "list":
            assert fields[4] in fields[3].split(",")


def test_parse_range():
    assert service.parse_range("2:10") == (2, 10)
    assert service.parse_range(" 0 : 4 ") == (0, 4)
    assert service.parse_range("3") == (3, 3)
    for bad in ("4:1", "0", "a:b", "1:2:3", ""):
        with pytest.raises(OneInputError):
            service.parse_range(bad)


def test_supernodes_wait_for_the_superlink_and_its_readiness():
    body = service.build(10, 11, (1, 4))
    assert body["deployment"] == "straight" and body["ready_status_gate"] is True
    roles = {r["name"]: r for r in body["roles"]}
    assert roles["supernode"]["parents"] == ["superlink"]
    assert "parents" not in roles["superlink"]
    assert (roles["supernode"]["min_vms"], roles["supernode"]["max_vms"]) == (1, 4)


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b["roles"][1].update(name="super node"),
        lambda b: b["roles"][1].update(name="superlink"),
        lambda b: b["roles"][1].update(parents=["gateway"]),
        lambda b: b["roles"][1].update(cardinality=20),
        lambda b: b["roles"][0].update(vm_template="3"),
        lambda b: b.update(name=" "),
    ],
)
def test_check_refuses_what_oneflow_refuses(change):
    body = service.build(10, 11)
    change(body)
    with pytest.raises(OneInputError):
        service.check(body)


def test_document_xml_keeps_the_json_intact_inside_cdata():
    body = service.build(1, 2, name="fl <&> ]]> fed")
    root = ET.fromstring(service.document_xml(body))
    assert root.findtext("NAME") == "fl <&> ]]> fed"
    stored = json.loads(root.findtext("BODY"))
    assert stored.pop("registration_time") > 0
    assert stored == body


def test_seven_zeros_own_shape_is_what_six_ten_refuses():
    """Why the body uses 6.10's shape: 6.10 rejects 7.0's at instantiation, 7.0 converts 6.10's."""
    from emulators import oneflow

    body = service.build(10, 11)
    seven = oneflow.convert(body)
    assert oneflow.validate(seven, "7.0.0") == []
    assert "roles[0]: vm_template is required" in oneflow.validate(seven, "6.10.0")
    assert oneflow.validate(body, "6.10.0") == oneflow.validate(body, "7.0.0") == []
