"""OneFlow's check of a service template body, per release, for tests: what the server runs
when a service template is created or instantiated (ServiceTemplate.validate in
src/oca/ruby/opennebula/flow/service_template.rb at release-6.10.0 and release-7.0.0): the
schema's required keys, types, enums and minimums of the fields fl-agent writes, and 7.0's
conversion of the 6.x shape first (ServiceTemplate.convert_template and
upgrade_template_contents).

`role_context` follows one role's VM from the service body to the CONTEXT oned gives it:
6.10's Service#resolve_attributes and Role#deploy (src/flow/lib/models/), 7.0's
Service#generate_template_contents and Role#init_template_attributes, oned's Template::merge of
the extra template (src/template/Template.cc) and the ``$NAME`` lookup of context values
(src/parsers/vm_var_syntax.y insert_single: the VM's attribute, empty when it has none).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from emulators.template import parse_template

_ROLE_REQUIRED = {
    "6.10": {"name": str, "vm_template": int},
    "7.0": {"name": str, "type": str, "template_id": int},
}
_ROLE_OPTIONAL = {
    "6.10": {"custom_attrs": dict, "cardinality": int, "min_vms": int, "max_vms": int,
             "parents": list, "vm_template_contents": str},
    "7.0": {"user_inputs": dict, "cardinality": int, "min_vms": int, "max_vms": int,
            "parents": list, "template_contents": dict},
}  # fmt: skip
_BODY_OPTIONAL = {
    "6.10": {"custom_attrs": dict, "ready_status_gate": bool, "deployment": str,
             "description": str},
    "7.0": {"user_inputs": dict, "ready_status_gate": bool, "deployment": str,
            "description": str},
}  # fmt: skip
_MINIMUM_ZERO = ("cardinality", "min_vms", "max_vms")


def _series(version: str) -> str:
    return "6.10" if version.startswith("6.") else "7.0"


def convert(body: dict[str, Any]) -> dict[str, Any]:
    """7.0's ServiceTemplate.convert_template, applied when every role has vm_template or
    vm_template_contents (old_format?)."""
    body = copy.deepcopy(body)
    roles = body.get("roles") or []
    if not roles or not all("vm_template" in r or "vm_template_contents" in r for r in roles):
        return body
    for role in roles:
        role["template_id"] = int(role.pop("vm_template", 0))
        role["type"] = "vm"
        if "custom_attrs" in role:
            role["user_inputs"] = role.pop("custom_attrs")
        if role.get("vm_template_contents"):
            role["template_contents"] = upgrade_template_contents(role["vm_template_contents"])
        role.pop("vm_template_contents", None)
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
        errors += [f"{where}: {k} must be >= 0" for k in _MINIMUM_ZERO if _negative(role, k)]
        if not all(isinstance(p, str) for p in role.get("parents") or []):
            errors.append(f"{where}: parents must be strings")
    if body.get("deployment", "none") not in ("none", "straight"):
        errors.append("body: deployment must be none or straight")
    return errors


def _negative(role: dict, key: str) -> bool:
    return isinstance(role.get(key), int) and role[key] < 0


def upgrade_template_contents(text: str) -> dict[str, Any]:
    """7.0's ServiceTemplate.upgrade_template_contents: 6.x ``KEY = VAL`` lines to a hash; every
    double quote is dropped, ``[ A = x, B = y ]`` becomes a one-element list of a hash."""
    result: dict[str, Any] = {}
    for line in re.split(r"\n(?![^\[]*\])", text):
        if "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        value = value.replace('"', "")
        if value.startswith("[") and value.endswith("]"):
            pairs = (e.split("=", 1) for e in re.split(r"\s*,\s*", value[1:-1]))
            item: Any = {p[0].strip(): p[1].strip() if len(p) > 1 else None for p in pairs}
        else:
            item = value
        if key in result:
            old = result[key]
            result[key] = [*old, item] if isinstance(old, list) else [old, item]
        else:
            result[key] = item
    return {k: [v] if isinstance(v, dict) else v for k, v in result.items()}


def role_context(
    body: dict[str, Any],
    role_name: str,
    vm_template: str,
    version: str,
    values: dict[str, str],
    role_values: dict[str, str],
) -> dict[str, str]:
    """The CONTEXT of a VM that `version`'s OneFlow deploys for `role_name` from the VM template
    text `vm_template`, given the inputs' values at instantiation (service, role)."""
    if validate(body, version):
        raise ValueError(f"OneFlow {version} refuses the body: {validate(body, version)}")
    vm = _hash(vm_template)
    if _series(version) == "6.10":
        role = next(r for r in body["roles"] if r["name"] == role_name)
        _require(body.get("custom_attrs"), values)
        _require(role.get("custom_attrs"), role_values)
        text = role.get("vm_template_contents") or ""
        for key in re.findall(r"\$(\w+)", text):
            if key in role_values or key in values:
                text = text.replace("$" + key, role_values.get(key, values.get(key, "")))
        extra = _hash(f'{text}\nSERVICE_ID = 0\nROLE_NAME = "{role_name}"')
        vm = {k: v for k, v in vm.items() if k not in extra}  # Template::merge: erase, then set
        vm.update({k: v for k, v in extra.items() if v != {}})
    else:
        body = convert(body)
        role = next(r for r in body["roles"] if r["name"] == role_name)
        _require(body.get("user_inputs"), values)
        _require(role.get("user_inputs"), role_values)
        contents = copy.deepcopy(role.get("template_contents") or {})
        if values or role_values:
            contents.setdefault("CONTEXT", {})
            for key, value in {**values, **role_values}.items():
                contents[key] = value
                contents["CONTEXT"][key] = f"${key}"
        vm = _deep_merge(vm, {**contents, "SERVICE_ID": "0", "ROLE_NAME": role_name})
    context = vm.get("CONTEXT") or {}
    return {
        k: re.sub(r"\$(\w+)(?![\w[])", lambda m: _single(vm, m[1]), v) for k, v in context.items()
    }


def _require(inputs: dict | None, values: dict[str, str]) -> None:
    """oneflow-server's check_custom_attrs (6.10) / check_user_inptus (7.0) at instantiation."""
    if inputs and set(inputs) - set(values):
        raise ValueError("Verify that every custom attribute have its corresponding value defined")


def _hash(text: str) -> dict[str, Any]:
    """Template text as attributes, the last of a repeated name winning (enough for CONTEXT)."""
    return dict(parse_template(text))


def _deep_merge(base: dict, other: dict) -> dict:
    """7.0's Hash#deep_merge(other, false): hashes merge recursively, anything else is replaced."""
    out = dict(base)
    for key, value in other.items():
        current = out.get(key)
        both = isinstance(value, dict) and isinstance(current, dict)
        out[key] = _deep_merge(current, value) if both else value
    return out


def _single(vm: dict[str, Any], name: str) -> str:
    value = vm.get(name)
    return value if isinstance(value, str) else ""


def _types(obj: dict, required: dict, optional: dict, where: str) -> list[str]:
    errors = [f"{where}: {k} is required" for k in required if k not in obj]
    for key, kind in {**required, **optional}.items():
        value = obj.get(key)
        if key in obj and (not isinstance(value, kind) or (kind is int and value is True)):
            errors.append(f"{where}: {key} must be {kind.__name__}")
    return errors
