"""OneFlow's check of a service template body, per release, for tests: what the server runs
when a service template is created or instantiated (ServiceTemplate.validate in
src/oca/ruby/opennebula/flow/service_template.rb at release-6.10.0 and release-7.0.0): the
schema's required keys and types, and 7.0's conversion of the 6.x shape first.
"""

from __future__ import annotations

import copy
import re
from typing import Any

_ROLE_REQUIRED = {
    "6.10": {"name": str, "vm_template": int},
    "7.0": {"name": str, "type": str, "template_id": int},
}
_ROLE_OPTIONAL = {
    "6.10": {"custom_attrs": dict, "cardinality": int, "min_vms": int, "max_vms": int,
             "parents": list},
    "7.0": {"user_inputs": dict, "cardinality": int, "min_vms": int, "max_vms": int,
            "parents": list},
}  # fmt: skip
_BODY_OPTIONAL = {
    "6.10": {"custom_attrs": dict, "ready_status_gate": bool, "deployment": str},
    "7.0": {"user_inputs": dict, "ready_status_gate": bool, "deployment": str},
}


def _series(version: str) -> str:
    return "6.10" if version.startswith("6.") else "7.0"


def convert(body: dict[str, Any]) -> dict[str, Any]:
    """7.0's ServiceTemplate.convert_template, applied when every role has vm_template."""
    body = copy.deepcopy(body)
    roles = body.get("roles") or []
    if not roles or not all("vm_template" in r for r in roles):
        return body
    for role in roles:
        role["template_id"] = int(role.pop("vm_template"))
        role["type"] = "vm"
        if "custom_attrs" in role:
            role["user_inputs"] = role.pop("custom_attrs")
    if "custom_attrs" in body:
        body["user_inputs"] = body.pop("custom_attrs")
    return body


def validate(body: dict[str, Any], version: str) -> list[str]:
    """What that release's OneFlow refuses in `body` (empty: it accepts it)."""
    series = _series(version)
    if series == "7.0":
        body = convert(body)
    errors = _types(body, {"name": str, "roles": list}, _BODY_OPTIONAL[series], "body")
    for i, role in enumerate(body.get("roles") or []):
        where = f"roles[{i}]"
        if not isinstance(role, dict):
            errors.append(f"{where}: not an object")
            continue
        errors += _types(role, _ROLE_REQUIRED[series], _ROLE_OPTIONAL[series], where)
        if not re.fullmatch(r"\w+", str(role.get("name"))):
            errors.append(f"{where}: name must match /^\\w+$/")
        if series == "7.0" and role.get("type") not in ("vm", "vr"):
            errors.append(f"{where}: type must be vm or vr")
    return errors


def _types(obj: dict, required: dict, optional: dict, where: str) -> list[str]:
    errors = [f"{where}: {k} is required" for k in required if k not in obj]
    for key, kind in {**required, **optional}.items():
        value = obj.get(key)
        if key in obj and (not isinstance(value, kind) or (kind is int and value is True)):
            errors.append(f"{where}: {key} must be {kind.__name__}")
    return errors
