"""`fl-agent one ...`: the command-line face of agent/one (argparse, output, exit codes).

`register` only builds argparse parsers; pyone and jinja2 load when a command runs.
Exit codes: 0 done, 1 the call failed (server unreachable, authentication, refused),
2 what was given is invalid (unknown GPU, used GPU, bad range, missing credentials file).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from agent.errors import AgentError
from agent.outcome import ExitCode
from agent.terminal import escape_controls

if TYPE_CHECKING:
    from agent.one.connection import OneClient

# Every image / virtual network the user can see: filter -2, the whole ID range (oned "A:siii").
IMAGE_POOL = ("imagepool.info", -2, -1, -1)
VNET_POOL = ("vnpool.info", -2, -1, -1)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `one` command group to the top-level subparsers."""
    one = sub.add_parser("one", help="operator commands on the OpenNebula front-end (pyone)")
    cmds = one.add_subparsers(dest="one_command", required=True, metavar="ONE_COMMAND")

    p = cmds.add_parser("hosts", help="NVIDIA PCI devices of every host, free or used")
    _connection_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hosts)

    p = cmds.add_parser("template", help="render (and register) the GPU SuperNode VM template")
    _connection_flags(p)
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument(
        "--gpu-address",
        action="append",
        metavar="ADDR",
        help="PCI address of a GPU (BUS:SLOT.FN, as `one hosts` shows); repeat for several",
    )
    gpu.add_argument("--gpu-model", metavar="VENDOR:DEVICE", help="any free GPU of this model")
    p.add_argument("--gpus", type=int, default=1, help="with --gpu-model: how many (default 1)")
    p.add_argument("--cores", type=int, default=8, help="vCPUs, pinned (default 8)")
    p.add_argument("--memory", type=int, default=32768, metavar="MB", help="default 32768")
    p.add_argument("--pin-policy", default="CORE", help="CORE, THREAD, SHARED or NONE")
    p.add_argument("--name", default="fl-supernode-gpu")
    p.add_argument("--image", metavar="ID_OR_NAME", help="the appliance image for the disk")
    p.add_argument("--network", metavar="ID_OR_NAME", help="virtual network for the NIC")
    p.add_argument(
        "--ovmf", metavar="PATH", help="OpenNebula 6.10: the OVMF_UEFIS path for FIRMWARE"
    )
    p.add_argument("--register", action="store_true", help="allocate it in OpenNebula")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_template)

    p = cmds.add_parser("service", help="the OneFlow service template: SuperLink + SuperNodes")
    _connection_flags(p)
    p.add_argument("--supernodes", default="2:10", metavar="MIN:MAX", help="default 2:10")
    p.add_argument(
        "--template", type=int, metavar="ID", help="the appliance VM template, for both roles"
    )
    p.add_argument(
        "--superlink-template", type=int, metavar="ID", help="the superlink role's, if another"
    )
    p.add_argument(
        "--supernode-template", type=int, metavar="ID", help="the supernode role's, if another"
    )
    p.add_argument("--name", default="flower-federation")
    p.add_argument("--register", action="store_true", help="create it (a OneFlow document)")
    p.add_argument("--json", action="store_true", help="with --register: the result as JSON")
    p.set_defaults(func=cmd_service)


def _connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", help="oned XML-RPC URL (default $ONE_XMLRPC or localhost:2633)")
    p.add_argument(
        "--auth", metavar="FILE", help="file with user:password (default $ONE_AUTH or one_auth)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")


# --- handlers ---


def cmd_hosts(args: argparse.Namespace) -> int:
    from agent.one import inventory

    try:
        client = _client(args)
        pool = client.call("hostpool.info")
    except AgentError as exc:
        return _fail(exc)
    everything = [d for d in inventory.devices(pool) if d.is_nvidia]
    devs = [d for d in everything if not d.is_vgpu]
    vgpus = [d for d in everything if d.is_vgpu]
    models = inventory.gpu_models(devs)
    if args.json:
        data = {
            "endpoint": client.conn.shown_endpoint,
            "hosts": inventory.host_states(pool),
            "devices": [d.to_dict() for d in devs],
            "vgpu_functions": [d.to_dict() for d in vgpus],
            "models": [m.to_dict() for m in models],
        }
        _write(json.dumps(data, indent=2) + "\n")
    else:
        _write(_hosts_text(devs, models, inventory.host_states(pool)) + _vgpu_text(vgpus))
    return ExitCode.OK


def _vgpu_text(vgpus: list) -> str:
    """vGPU virtual functions, apart: slots for vGPU profiles, not passthrough GPUs."""
    if not vgpus:
        return ""
    lines = ["", "NVIDIA vGPU virtual functions (not passthrough GPUs, never counted free):"]
    for d in vgpus:
        state = "free" if d.free else f"VM {d.vmid}"
        profiles = d.profiles or "none listed"
        lines.append(f"  {d.host}  {d.short_address}  {state}  profiles: {profiles}")
    return "\n".join(lines) + "\n"


def _hosts_text(devs: list, models: list, states: dict[str, str]) -> str:
    rows = [("HOST", "ADDRESS", "VENDOR:DEVICE", "NUMA", "STATE", "DEVICE")]
    for d in devs:
        if not d.free:
            state = f"VM {d.vmid}"
        else:
            state = "free" if d.host_usable else f"free, host {states[d.host]}"
        name = d.device_name if d.is_gpu else f"{d.device_name} (not a GPU: {d.class_name})"
        rows.append((d.host, d.short_address, d.model, d.numa_node, state, name))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[5]]) for r in rows
    ]
    if len(rows) == 1:
        lines = ["no NVIDIA PCI devices in the host pool (is pci.conf's :filter: '10de:*'?)"]
    lines.append("")
    lines.append("free NVIDIA GPUs per model (on hosts the scheduler can use):")
    lines += [f"  {m.model}  {m.free} of {m.total} free  {m.name}" for m in models] or ["  none"]
    return "\n".join(lines) + "\n"


def cmd_template(args: argparse.Namespace) -> int:
    from agent.one import inventory, vmtemplate

    req = vmtemplate.TemplateRequest(
        name=args.name,
        gpu_addresses=tuple(args.gpu_address or ()),
        gpu_model=args.gpu_model,
        gpus=args.gpus,
        cores=args.cores,
        memory_mb=args.memory,
        pin_policy=args.pin_policy.upper(),
        image=args.image,
        network=args.network,
    )
    try:
        vmtemplate.check_request(req)
        client = _client(args)
        pool = client.call("hostpool.info")
        devs = inventory.devices(pool)
        selection = vmtemplate.select_gpus(req, devs)
        firmware = _firmware(client, pool, selection.hosts, args.ovmf)
        disk = vmtemplate.disk_for(req.image, client.call(*IMAGE_POOL)) if req.image else None
        nic = vmtemplate.nic_for(req.network, client.call(*VNET_POOL)) if req.network else None
        text = vmtemplate.render(req, selection, disk, nic, firmware=firmware.value)
        template_id = client.call("template.allocate", text) if args.register else None
    except AgentError as exc:
        return _fail(exc)
    for warning in (*selection.warnings, firmware.warning):
        if warning:
            sys.stderr.write(f"warning: {warning}\n")
    if args.json:
        data = {
            "template": text,
            "id": template_id,
            "firmware": {"value": firmware.value, "source": firmware.source},
            **selection.to_dict(),
        }
        _write(json.dumps(data, indent=2) + "\n")
    elif args.register:
        _write(f"ID: {template_id}\n")
    else:
        _write(text)
    if selection.hosts and not args.json:
        sys.stderr.write(f"can run now on: {', '.join(selection.hosts)}\n")
    return ExitCode.OK


def cmd_service(args: argparse.Namespace) -> int:
    from agent.one import service

    try:
        templates = _role_templates(args)
        supernodes = service.parse_range(args.supernodes)
        if not args.register:
            body = service.build(*templates, supernodes, args.name)
            _write(json.dumps(body, indent=2) + "\n")
            return ExitCode.OK
        client = _client(args)
        body = service.build(*templates, supernodes, args.name, _flow_series(client))
        for warning in _check_templates(client, templates):
            sys.stderr.write(f"warning: {warning}\n")
        doc_id = client.call(
            "document.allocate", service.document_xml(body), service.SERVICE_TEMPLATE_DOCUMENT
        )
    except AgentError as exc:
        return _fail(exc)
    _write(
        json.dumps({"id": doc_id, "template": body}, indent=2) + "\n"
        if args.json
        else f"ID: {doc_id}\n"
    )
    return ExitCode.OK


def _role_templates(args: argparse.Namespace) -> tuple[int, int]:
    """(superlink, supernode) VM template IDs: --template for both unless a role has its own."""
    from agent.one.connection import invalid_input

    link = args.superlink_template if args.superlink_template is not None else args.template
    node = args.supernode_template if args.supernode_template is not None else args.template
    if link is None or node is None:
        raise invalid_input(
            "--template",
            "no VM template for the " + ("superlink" if link is None else "supernode") + " role",
            "give --template ID (the appliance's, both roles) or a role's own --*-template ID",
        )
    return link, node


def _flow_series(client: OneClient) -> str:
    """The OneFlow shape the front-end stores: "7.0" from OpenNebula 7, else "6.10"."""
    from agent.one import versions
    from agent.one.connection import invalid_input

    answer = client.call("system.version")
    version = versions.parse_version(str(answer))
    if version is None:
        raise invalid_input("one.system.version", f"{answer!r} is not an OpenNebula version")
    return "7.0" if version >= (7, 0, 0) else "6.10"


def _firmware(client: OneClient, pool: object, hosts: tuple[str, ...], ovmf: str | None):
    """OS/FIRMWARE for the front-end's version: UEFI on 7.0+; on 6.10 an OVMF_UEFIS path
    (--ovmf, else the candidate hosts' templates, else this machine's vmm_exec_kvm.conf when
    it is the front-end, else 6.10's default with a warning)."""
    from agent.one import inventory, versions
    from agent.one.connection import invalid_input
    from agent.paths import Root

    answer = client.call("system.version")
    version = versions.parse_version(str(answer))
    if version is None:
        raise invalid_input("one.system.version", f"{answer!r} is not an OpenNebula version")
    if ovmf is not None and not versions.has_uefi_keyword(version):
        return versions.Firmware(ovmf, "--ovmf")
    uefis = inventory.host_attribute(pool, hosts, "OVMF_UEFIS")
    source = f"the template of host {', '.join(hosts)}"
    if uefis is None:
        conf = Root.from_env().path(versions.VMM_KVM_CONF)
        try:
            uefis = versions.ovmf_from_conf(conf.read_text())
            source = str(conf)
        except OSError:
            source = f"neither the hosts' templates nor {versions.VMM_KVM_CONF} here"
    return versions.firmware_for(version, uefis, source)


def _check_templates(client: OneClient, templates: tuple[int, int]) -> list[str]:
    """Both roles' VM templates exist (OneFlow would only find out at instantiation) and pass
    the role on to the agent: CONTEXT ``FL_ROLE = "$FL_ROLE"`` (agent/one/service.py). One
    template for both roles without it would make every VM a SuperNode: refused. A separate
    superlink template without it may be another SuperLink appliance: a warning."""
    from agent.one.connection import OneInputError, invalid_input

    link, node = templates
    warnings: list[str] = []
    for template_id in dict.fromkeys(templates):
        flag = "--superlink-template" if template_id == link else "--supernode-template"
        flag = "--template" if link == node else flag
        try:
            found = client.call("template.info", template_id, False, False)
        except OneInputError:
            raise invalid_input(
                flag, f"VM template {template_id} does not exist", "see `onetemplate list`"
            ) from None
        if template_id != link or _passes_role(found):
            continue
        missing = f'VM template {template_id} has no CONTEXT FL_ROLE = "$FL_ROLE"'
        if link == node:
            raise invalid_input(
                flag,
                f"{missing}: the SuperLink's VMs would boot as SuperNodes",
                "register the appliance template with `fl-agent one template` (it has it), "
                'or add FL_ROLE = "$FL_ROLE" to its CONTEXT',
            )
        warnings.append(f"{missing}: an fl-agent appliance from it boots as a SuperNode")
    return warnings


def _passes_role(template: object) -> bool:
    """pyone gives a VM template's TEMPLATE as a dict, CONTEXT inside it as one."""
    body = getattr(template, "TEMPLATE", None)
    context = body.get("CONTEXT") if isinstance(body, dict) else None
    return isinstance(context, dict) and str(context.get("FL_ROLE", "")).strip() == "$FL_ROLE"


# --- helpers ---


def _client(args: argparse.Namespace) -> OneClient:
    from agent.one.connection import OneClient, resolve

    return OneClient(resolve(args.endpoint, args.auth), timeout=args.timeout)


def _fail(exc: AgentError) -> int:
    from agent.one.connection import OneInputError

    for problem in exc.problems:
        sys.stderr.write(f"error: {escape_controls(str(problem))}\n")
    return ExitCode.INVALID if isinstance(exc, OneInputError) else ExitCode.FAILED


def _write(text: str) -> None:
    """Names and states come from oned: its lines stay, control characters in them do not."""
    sys.stdout.write(escape_controls(text, keep="\n"))
