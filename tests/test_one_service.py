"""The OneFlow service template body and the FL_* user inputs table, without a server."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from agent.config import build_config
from agent.one import service
from agent.one.connection import OneInputError
from agent.one.inputs import INPUTS, ROLE_INPUTS, SHARED_INPUTS
from agent.one.vmtemplate import Selection, TemplateRequest, render
from emulators import oneflow

APPLIANCE = render(TemplateRequest(), Selection(({"SHORT_ADDRESS": "41:00.0"},), ("host-1",)))
"""The appliance VM template `fl-agent one template` writes, the one template of both roles."""


def test_every_user_input_default_is_a_valid_agent_config():
    defaults = {i.name: i.default for i in INPUTS}
    assert build_config(defaults).ok


@pytest.mark.parametrize(("name", "option"), [(i.name, o) for i in INPUTS for o in i.options])
def test_every_list_option_is_accepted_by_the_agent(name, option):
    result = build_config({name: option})
    assert result.ok, result.problems


def test_user_input_specs_have_five_fields():
    for i in INPUTS:
        fields = i.spec().split("|")
        assert len(fields) == 5 and fields[0] == "O" and fields[2]
        assert fields[1] in {"list", "text", "text64", "number", "number-float"}
        if fields[1] == "list":
            assert fields[4] in fields[3].split(",")


def test_each_role_is_asked_what_it_reads_once_and_never_its_role():
    link = {*SHARED_INPUTS, *ROLE_INPUTS["superlink"]}
    node = {*SHARED_INPUTS, *ROLE_INPUTS["supernode"]}
    assert {"FL_NODE_AUTH", "FL_SSL_CA_CERT", "FL_SSL_CERT", "FL_SSL_KEY"} <= link
    assert not link & {"FL_GPU_ENABLED", "FL_ISOLATION", "FL_SUPERLINK_ADDRESS", "FL_DATA_DIR"}
    assert not node & {"FL_SSL_CERT", "FL_SSL_KEY"}
    assert "FL_ROLE" not in link | node
    assert link | node | {"FL_ROLE"} == {i.name for i in INPUTS}
    assert not set(SHARED_INPUTS) & (set(ROLE_INPUTS["superlink"]) | set(ROLE_INPUTS["supernode"]))


def test_no_input_name_starts_another():
    """6.10 replaces ``$NAME`` as plain text (Service#resolve_attributes): ``$FL_X`` would also
    rewrite the start of ``$FL_X_Y``."""
    names = [i.name for i in INPUTS]
    assert not [(a, b) for a in names for b in names if a != b and b.startswith(a)]


def test_parse_range():
    assert service.parse_range("2:10") == (2, 10)
    assert service.parse_range(" 0 : 4 ") == (0, 4)
    assert service.parse_range("3") == (3, 3)
    for bad in ("4:1", "0", "a:b", "1:2:3", ""):
        with pytest.raises(OneInputError):
            service.parse_range(bad)


@pytest.mark.parametrize("series", ["6.10", "7.0"])
def test_supernodes_wait_for_the_superlink_and_its_readiness(series):
    body = service.build(10, 11, (1, 4), series=series)
    assert body["deployment"] == "straight" and body["ready_status_gate"] is True
    roles = {r["name"]: r for r in body["roles"]}
    assert roles["supernode"]["parents"] == ["superlink"]
    assert "parents" not in roles["superlink"]
    assert (roles["supernode"]["min_vms"], roles["supernode"]["max_vms"]) == (1, 4)


VALUES = {"FLOWER_VERSION": "", "FL_TLS_ENABLED": "YES", "FL_LOG_LEVEL": "DEBUG",
          "FL_NODE_AUTH": "NO"}  # fmt: skip
ROLE_VALUES = {
    "superlink": {"FL_SSL_CA_CERT": "", "FL_SSL_CERT": "", "FL_SSL_KEY": ""},
    "supernode": {i.name: i.default for i in INPUTS if i.name in ROLE_INPUTS["supernode"]}
    | {"FL_GPU_ENABLED": "NO"},
}


@pytest.mark.parametrize(
    ("series", "version"), [("6.10", "6.10.0"), ("6.10", "7.0.0"), ("7.0", "7.0.0")]
)
@pytest.mark.parametrize("role", ["superlink", "supernode"])
def test_one_appliance_template_boots_each_role_with_its_inputs(series, version, role):
    """The context OneFlow and oned give a role's VM (emulators/oneflow.py role_context): the
    6.10 shape on 6.10 and converted by 7.0, 7.0's own shape on 7.0."""
    body = service.build(5, 5, series=series)
    context = oneflow.role_context(body, role, APPLIANCE, version, VALUES, ROLE_VALUES[role])
    assert context["FL_ROLE"] == role
    assert (context["FL_NODE_AUTH"], context["FL_LOG_LEVEL"]) == ("NO", "DEBUG")
    for name, value in ROLE_VALUES[role].items():
        assert context[name] == value, name
    result = build_config(context)
    assert result.ok, result.problems
    assert result.config.role == role and result.config.node_auth is False
    assert result.config.log_level == "DEBUG"


def test_six_ten_drops_a_value_the_role_text_does_not_name():
    """Why each role's vm_template_contents names its inputs: 6.10 substitutes values only
    there; the VM attribute, and so the context variable, would otherwise stay empty."""
    body = service.build(5, 5)
    link = body["roles"][0]
    link["vm_template_contents"] = link["vm_template_contents"].replace(
        'FL_NODE_AUTH = "$FL_NODE_AUTH"', ""
    )
    context = oneflow.role_context(body, "superlink", APPLIANCE, "6.10.0", VALUES,
                                   ROLE_VALUES["superlink"])  # fmt: skip
    assert (context["FL_ROLE"], context["FL_NODE_AUTH"]) == ("superlink", "")


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
    body = service.build(10, 11)
    seven = oneflow.convert(body)
    assert oneflow.validate(seven, "7.0.0") == []
    assert "roles[0]: vm_template is required" in oneflow.validate(seven, "6.10.0")
    assert oneflow.validate(body, "6.10.0") == oneflow.validate(body, "7.0.0") == []
    assert seven["roles"][0]["template_contents"]["FL_ROLE"] == "superlink"


def test_seven_zero_shape_is_what_seven_zero_makes_of_the_six_ten_one():
    """What `--register` stores on a 7.x front-end equals OneFlow's own conversion, except the
    ``NAME = "$NAME"`` entries 7.0 overwrites with the inputs' values anyway."""
    six, seven = service.build(10, 11), service.build(10, 11, series="7.0")
    converted = oneflow.convert(six)
    for role in converted["roles"]:
        role["template_contents"] = {
            k: v for k, v in role["template_contents"].items() if v != f"${k}"
        }
    assert converted == seven
    assert oneflow.validate(seven, "7.0.0") == []
