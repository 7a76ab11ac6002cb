"""The appliance's GPU VM template (a SuperNode, or by FL_ROLE the SuperLink): choose the GPU
against the host pool, render, register.

The PCI request is either by address (``PCI = [ SHORT_ADDRESS = "41:00.0" ]``, matched first by
address on any host that has it free) or by model (``PCI = [ VENDOR, DEVICE, CLASS ]``, any
free device of that model), as oned's HostSharePCI::test (OpenNebula/one) matches them.
All PCI entries of a VM come from one host, so several addresses must be free on one host.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.errors import AgentError, Problem
from agent.one import syntax
from agent.one.connection import invalid_input
from agent.one.inputs import INPUTS
from agent.one.inventory import PciDevice, gpu_models, normalize_address

PIN_POLICIES = ("CORE", "THREAD", "SHARED", "NONE")
DEFAULT_NAME = "fl-supernode-gpu"
_MODEL = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{4})(?::([0-9a-f]{4}))?$")
_TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class TemplateRequest:
    name: str = DEFAULT_NAME
    gpu_addresses: tuple[str, ...] = ()
    gpu_model: str | None = None  # vendor:device[:class]
    gpus: int = 1  # with gpu_model (or neither): how many of that model
    cores: int = 8
    memory_mb: int = 32768
    pin_policy: str = "CORE"
    image: str | None = None  # image ID or name
    network: str | None = None  # virtual network ID or name


@dataclass(frozen=True)
class Selection:
    """The PCI entries to write and where they can be placed now."""

    pcis: tuple[dict[str, str], ...]
    hosts: tuple[str, ...]  # usable hosts with all of it free
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"pci": list(self.pcis), "hosts": list(self.hosts), "warnings": list(self.warnings)}


def check_request(req: TemplateRequest) -> None:
    """The request's own values, before any look at the pool."""
    if req.gpu_addresses and req.gpu_model:
        raise invalid_input("--gpu-address", "give either --gpu-address or --gpu-model, not both")
    if not 1 <= req.cores <= 1024:
        raise invalid_input("--cores", f"{req.cores}: expected 1 to 1024")
    if req.memory_mb < 1024:
        raise invalid_input(
            "--memory", f"{req.memory_mb} MB: a GPU SuperNode needs at least 1024 MB"
        )
    if not 1 <= req.gpus <= 16:
        raise invalid_input("--gpus", f"{req.gpus}: expected 1 to 16")
    if req.gpu_addresses and req.gpus != 1:
        raise invalid_input("--gpus", "goes with --gpu-model; repeat --gpu-address instead")
    if req.pin_policy not in PIN_POLICIES:
        raise invalid_input(
            "--pin-policy", f"{req.pin_policy!r}: expected {', '.join(PIN_POLICIES)}"
        )
    for flag, value in (("--name", req.name), ("--image", req.image), ("--network", req.network)):
        if value is not None and (not value.strip() or "\n" in value):
            raise invalid_input(flag, f"{value!r}: expected a non-empty single line")
        try:
            syntax.quote(value or "")
        except syntax.TemplateSyntaxError as exc:
            raise invalid_input(flag, str(exc)) from None


def select_gpus(req: TemplateRequest, devs: list[PciDevice]) -> Selection:
    """The PCI entries for `req`, checked against the pool's devices; OneInputError if not there."""
    if req.gpu_addresses:
        return _by_address(req.gpu_addresses, devs)
    if req.gpu_model:
        return _by_model(req.gpu_model, req.gpus, devs)
    models = gpu_models(devs)
    if len(models) != 1:
        listed = ", ".join(f"{m.model} ({m.name}, {m.free} free)" for m in models) or "none"
        raise invalid_input(
            "--gpu-model",
            f"choose the GPU: the pool has {len(models)} NVIDIA GPU models: {listed}",
            "give --gpu-model VENDOR:DEVICE or --gpu-address ADDR (see `fl-agent one hosts`)",
        )
    return _by_model(models[0].model, req.gpus, devs)


def _by_address(addresses: tuple[str, ...], devs: list[PciDevice]) -> Selection:
    wanted: list[str] = []
    for text in addresses:
        short = normalize_address(text)
        if short is None:
            raise invalid_input(
                "--gpu-address", f"{text!r} is not a PCI address", "use BUS:SLOT.FN"
            )
        if short in wanted:
            raise invalid_input("--gpu-address", f"{short} given twice")
        _check_address(short, devs)
        wanted.append(short)
    hosts = _hosts_with(devs, lambda d: d.short_address in wanted and d.is_gpu, len(wanted))
    if not hosts:
        raise invalid_input(
            "--gpu-address",
            f"no usable host has all of {', '.join(wanted)} free",
            "a VM's PCI devices come from one host: pick addresses free on the same host",
        )
    return Selection(tuple({"SHORT_ADDRESS": a} for a in wanted), hosts)


def _check_address(short: str, devs: list[PciDevice]) -> None:
    at = [d for d in devs if d.short_address == short]
    if not at:
        gpus = sorted({d.short_address for d in devs if d.is_gpu}) or ["none"]
        raise invalid_input(
            "--gpu-address",
            f"no host has a PCI device at {short}",
            f"NVIDIA GPU addresses in the pool: {', '.join(gpus)}",
        )
    gpus = [d for d in at if d.is_gpu]
    if not gpus:
        d = at[0]
        raise invalid_input(
            "--gpu-address",
            f"{short} is {d.device_name or d.class_name} ({d.model}, class {d.device_class}) "
            f"on {d.host}, not an NVIDIA GPU",
            "see `fl-agent one hosts` for the GPUs",
        )
    if not any(d.schedulable for d in gpus):
        where = ", ".join(_why_not(d) for d in gpus)
        raise invalid_input("--gpu-address", f"the GPU at {short} is not free: {where}")


def _why_not(d: PciDevice) -> str:
    return f"{d.host}: used by VM {d.vmid}" if not d.free else f"{d.host}: host not usable"


def _by_model(text: str, count: int, devs: list[PciDevice]) -> Selection:
    match = _MODEL.match(text.strip().lower())
    if not match:
        raise invalid_input(
            "--gpu-model", f"{text!r} is not VENDOR:DEVICE", "for example 10de:2335"
        )
    vendor, device, cls = match[1], match[2], match[3]
    same = [
        d
        for d in devs
        if d.is_gpu and (d.vendor, d.device) == (vendor, device) and cls in (None, d.device_class)
    ]
    if not same:
        known = ", ".join(f"{m.model} ({m.name})" for m in gpu_models(devs)) or "none"
        raise invalid_input(
            "--gpu-model", f"no NVIDIA GPU {text} in the host pool", f"models present: {known}"
        )
    pci = {"VENDOR": vendor, "DEVICE": device, "CLASS": cls or same[0].device_class}
    hosts = _hosts_with(devs, lambda d: d in same, count)
    warnings: tuple[str, ...] = ()
    if not hosts:
        free = sum(d.schedulable for d in same)
        warnings = (
            f"no usable host has {count} free {text} GPU(s) now ({free} free in all); "
            "VMs from this template stay PENDING until one has",
        )
    return Selection((pci,) * count, hosts, warnings)


def _hosts_with(
    devs: list[PciDevice], match: Callable[[PciDevice], bool], count: int
) -> tuple[str, ...]:
    """Usable hosts with at least `count` free devices that `match`."""
    per_host: dict[str, int] = {}
    for d in devs:
        if match(d) and d.schedulable:
            per_host[d.host] = per_host.get(d.host, 0) + 1
    return tuple(h for h, n in per_host.items() if n >= count)


def render(
    req: TemplateRequest,
    selection: Selection,
    disk: dict[str, str] | None = None,
    nic: dict[str, str] | None = None,
    *,
    firmware: str = "UEFI",
) -> str:
    """The template text; parsed back before it is returned, so oned can read what it gets."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["q"] = syntax.quote
    text = env.get_template("supernode.tmpl.j2").render(
        version=__version__,
        name=req.name,
        description="Flower SuperNode (or SuperLink: FL_ROLE), NVIDIA GPU passthrough (fl-agent)",
        cores=req.cores,
        memory=req.memory_mb,
        pin_policy=req.pin_policy,
        firmware=firmware,
        pcis=selection.pcis,
        disk=disk,
        nic=nic,
        inputs=INPUTS,
    )
    try:
        syntax.parse(text)
    except syntax.TemplateSyntaxError as exc:
        raise AgentError(Problem("template_render", "supernode.tmpl.j2", str(exc))) from None
    return text


IMAGE_TYPES = ("OS", "CDROM", "DATABLOCK", "KERNEL", "RAMDISK", "CONTEXT", "FILESYSTEM")


def disk_for(image: str, pool: object) -> dict[str, str]:
    """The DISK attributes for an image ID or name, checked against a pyone IMAGE_POOL."""
    found = _find(image, getattr(pool, "IMAGE", None) or [], "--image", "image", "oneimage list")
    kind = int(found.TYPE)
    if kind != 0:
        shown = IMAGE_TYPES[kind] if 0 <= kind < len(IMAGE_TYPES) else str(kind)
        raise invalid_input(
            "--image",
            f"image {found.ID} ({found.NAME}) is a {shown} image, not an OS disk",
            "give the SuperNode appliance's OS image",
        )
    return _reference(image, found, "IMAGE_ID", "IMAGE", "IMAGE_UNAME")


def nic_for(network: str, pool: object) -> dict[str, str]:
    """The NIC attributes for a virtual network ID or name, checked against a VNET_POOL."""
    found = _find(
        network, getattr(pool, "VNET", None) or [], "--network", "network", "onevnet list"
    )
    return _reference(network, found, "NETWORK_ID", "NETWORK", "NETWORK_UNAME")


def _is_id(value: str) -> bool:
    """ASCII digits: str.isdigit also accepts '²' and other scripts' digits."""
    return re.fullmatch(r"[0-9]{1,10}", value) is not None


def _find(value: str, items: list, flag: str, what: str, listing: str) -> object:
    value = value.strip()
    if _is_id(value):
        matches = [i for i in items if int(i.ID) == int(value)]
    else:
        matches = [i for i in items if str(i.NAME) == value]
    if not matches:
        raise invalid_input(flag, f"no {what} {value!r} visible to this user", f"see `{listing}`")
    if len(matches) > 1:
        ids = ", ".join(f"{i.ID} (owner {i.UNAME})" for i in matches)
        raise invalid_input(flag, f"several {what}s are named {value!r}: {ids}", "give the ID")
    return matches[0]


def _reference(value: str, item: object, id_key: str, name_key: str, owner_key: str) -> dict:
    """By ID as given; by name with its owner, so the name resolves for whoever instantiates."""
    if _is_id(value.strip()):
        return {id_key: str(item.ID)}
    return {name_key: str(item.NAME), owner_key: str(item.UNAME)}
