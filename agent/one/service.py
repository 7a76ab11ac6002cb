"""The OneFlow service template: a SuperLink role and a SuperNode role that waits for it.

Shape: the one OpenNebula 6.10 and 7.x both accept (agent/one/versions.py): roles with
``vm_template``, inputs as ``custom_attrs`` at service and role level, ``ready_status_gate``.
6.10's OneFlow requires exactly that; 7.0's converts it (``vm_template`` -> ``template_id``,
``type: vm``, ``custom_attrs`` -> ``user_inputs``, ``vm_template_contents`` ->
``template_contents``) before it validates, whereas 6.10 would reject 7.0's own shape (no
``vm_template``) only when the service is instantiated. Registering goes to oned directly, past
OneFlow's conversion, so a 7.x front-end gets the shape its OneFlow would have stored
(``build(..., series="7.0")``): its CLI and Sunstone read ``user_inputs`` from the stored body.
``deployment: straight`` deploys a role only when its parents run; with ``ready_status_gate``
"running" means the VM reported ``READY=YES`` through OneGate (docs/onegate.md),
so the SuperNodes start after the SuperLink is serving, and OneFlow counts a SuperNode only
when fl-agent reports it ready.

One appliance template, two roles: each role sets the VM attribute ``FL_ROLE`` to its own name,
and the appliance template's ``CONTEXT`` carries ``FL_ROLE = "$FL_ROLE"`` (agent/one/vmtemplate.py),
which oned resolves from the VM's attributes. On 6.10 the role's ``vm_template_contents`` text is
the extra template of ``one.template.instantiate`` (src/flow/lib/models/role.rb, Role#deploy);
oned's Template::merge replaces whole attributes, so a ``CONTEXT`` there would drop the
template's own CONTEXT: only a top-level ``FL_ROLE`` is safe. 6.10 also carries an input's value
into a VM only through a ``$NAME`` in that text (Service#resolve_attributes), hence one
``NAME = "$NAME"`` line per input the role sees. On 7.0 ``template_contents`` is deep-merged into
the VM template by OneFlow (Role#init_template_attributes) and each input becomes a VM attribute
and a CONTEXT entry (Service#generate_template_contents), so ``FL_ROLE`` alone is enough.

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
from agent.one.inputs import ROLE_INPUTS, SHARED_INPUTS, by_name

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
    series: str = "6.10",
) -> dict[str, object]:
    """The service template body in `series`' shape ("6.10" or "7.0"), checked as OneFlow's
    validator would. The two template IDs may be the same appliance template."""
    low, high = supernodes
    seven = series == "7.0"
    inputs_key = "user_inputs" if seven else "custom_attrs"
    roles = [
        _role("superlink", superlink_template, (1, 1, 1), seven),
        {
            **_role("supernode", supernode_template, (low, low, high), seven),
            "parents": ["superlink"],
        },
    ]
    body: dict[str, object] = {
        "name": name,
        "description": "Flower federated learning: a SuperLink, then GPU SuperNodes (fl-agent)",
        "deployment": "straight",
        "ready_status_gate": True,
        "roles": roles,
        inputs_key: by_name(SHARED_INPUTS),
    }
    check(body)
    return body


def _role(role: str, template: int, sizes: tuple[int, int, int], seven: bool) -> dict:
    """One role: its VMs get ``FL_ROLE`` = the role's name, and its inputs (module docstring)."""
    cardinality, low, high = sizes
    common = {"cardinality": cardinality, "min_vms": low, "max_vms": high}
    asked = by_name(ROLE_INPUTS[role])
    if seven:
        contents = {"FL_ROLE": role}
        return {"name": role, "type": "vm", "template_id": template,
                "template_contents": contents, **common, "user_inputs": asked}  # fmt: skip
    lines = [f'FL_ROLE = "{role}"', *(f'{k} = "${k}"' for k in (*SHARED_INPUTS, *asked))]
    return {"name": role, "vm_template": template, "vm_template_contents": "\n".join(lines),
            **common, "custom_attrs": asked}  # fmt: skip


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
        template = role.get("template_id", role.get("vm_template"))
        if not isinstance(template, int) or template < 0:
            raise invalid_input(where, "the VM template must be an ID (an integer >= 0)")
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
