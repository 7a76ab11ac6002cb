"""The OneFlow service template: a SuperLink role and a SuperNode role that waits for it.

Shape: the one OpenNebula 6.10 and 7.x both accept (agent/one/versions.py): roles with
``vm_template``, inputs as ``custom_attrs`` at service and role level, ``ready_status_gate``.
6.10's OneFlow requires exactly that; 7.0's converts it (``vm_template`` -> ``template_id``,
``type: vm``, ``custom_attrs`` -> ``user_inputs``) before it validates, whereas 6.10 would reject
7.0's own shape (no ``vm_template``) only when the service is instantiated.
``deployment: straight`` deploys a role only when its parents run; with ``ready_status_gate``
"running" means the VM reported ``READY=YES`` through OneGate (docs/onegate.md),
so the SuperNodes start after the SuperLink is serving, and OneFlow counts a SuperNode only
when fl-agent reports it ready.

Registering: OneFlow keeps service templates in oned as documents of type 101 whose
``TEMPLATE/BODY`` holds the JSON (Ruby OCA DocumentJSON#build_template_xml; ServiceTemplate
DOCUMENT_TYPE = 101). pyone talks to oned only, so ``one.document.allocate`` with that XML is
what ``oneflow-template create`` ends in; the checks OneFlow's server would make first (role
names, min_vms <= cardinality <= max_vms, parents known) are made here, and
``registration_time`` is set as ServiceTemplate#allocate sets it.
"""

from __future__ import annotations

import html
import json
import re
import time

from agent.one.connection import invalid_input
from agent.one.inputs import SHARED_INPUTS, SUPERNODE_INPUTS, by_name

SERVICE_TEMPLATE_DOCUMENT = 101
DEFAULT_NAME = "flower-federation"
DEFAULT_SUPERNODES = (2, 10)
"""The community appliance's service: 1 SuperLink, 2 to 10 SuperNodes (peer-appliance row 14)."""

_ROLE_NAME = re.compile(r"^\w+$")


def parse_range(text: str) -> tuple[int, int]:
    """``MIN:MAX`` (or a single ``N``) -> (min, max), with 0 <= min <= max and max >= 1."""
    match = re.fullmatch(r"\s*([0-9]{1,4})\s*(?::\s*([0-9]{1,4})\s*)?", text)
    if not match:
        raise invalid_input("--supernodes", f"{text!r} is not MIN:MAX", "for example 2:10")
    low, high = int(match[1]), int(match[2] if match[2] is not None else match[1])
    if low > high or high < 1:
        raise invalid_input("--supernodes", f"{text!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return low, high


def build(
    superlink_template: int,
    supernode_template: int,
    supernodes: tuple[int, int] = DEFAULT_SUPERNODES,
    name: str = DEFAULT_NAME,
) -> dict[str, object]:
    """The service template body, checked as OneFlow's validator would."""
    low, high = supernodes
    own_inputs = tuple(i.name for i in SUPERNODE_INPUTS if i.name not in SHARED_INPUTS)
    body: dict[str, object] = {
        "name": name,
        "description": "Flower federated learning: a SuperLink, then GPU SuperNodes (fl-agent)",
        "deployment": "straight",
        "ready_status_gate": True,
        "roles": [
            {
                "name": "superlink",
                "vm_template": superlink_template,
                "cardinality": 1,
                "min_vms": 1,
                "max_vms": 1,
            },
            {
                "name": "supernode",
                "vm_template": supernode_template,
                "parents": ["superlink"],
                "cardinality": low,
                "min_vms": low,
                "max_vms": high,
                "custom_attrs": by_name(own_inputs),
            },
        ],
        "custom_attrs": by_name(SHARED_INPUTS),
    }
    check(body)
    return body


def check(body: dict) -> None:
    """OneFlow's own checks on a service template (ServiceTemplate.validate / validate_values)."""
    if not isinstance(body.get("name"), str) or not body["name"].strip():
        raise invalid_input("--name", "the service template needs a name")
    roles = body.get("roles") or []
    names = [r.get("name") for r in roles]
    for role in roles:
        where = f"role {role.get('name')!r}"
        if not _ROLE_NAME.match(str(role.get("name"))) or names.count(role["name"]) > 1:
            raise invalid_input(where, "role names are unique words (letters, digits, _)")
        if not isinstance(role.get("vm_template"), int) or role["vm_template"] < 0:
            raise invalid_input(where, "vm_template must be a VM template ID (an integer >= 0)")
        card = role.get("cardinality", 0)
        if not role.get("min_vms", 0) <= card <= role.get("max_vms", card):
            raise invalid_input(where, "need min_vms <= cardinality <= max_vms")
        for parent in role.get("parents", []):
            if parent not in names:
                raise invalid_input(where, f"parent {parent!r} is not a role")


def document_xml(body: dict) -> str:
    """The ``TEMPLATE`` oned stores for a OneFlow service template (DocumentJSON layout)."""
    stamped = {**body, "registration_time": int(time.time())}
    # ']]>' would end the CDATA section early; inside JSON strings '>' may be written \u003e.
    text = json.dumps(stamped).replace("]]>", "]]\\u003e")
    name = html.escape(str(body["name"]))
    return f"<TEMPLATE><NAME>{name}</NAME><BODY><![CDATA[{text}]]></BODY></TEMPLATE>"
