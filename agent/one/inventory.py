"""NVIDIA PCI devices across the hosts, from ``one.hostpool.info``.

The host pool's ``HOST/HOST_SHARE/PCI_DEVICES/PCI`` entries are what the monitoring probe found
and what the scheduler assigns (OpenNebula/one's HostSharePCI): ``SHORT_ADDRESS`` is
lspci's ``bus:slot.func``, ``TYPE`` is ``vendor:device:class``, ``VMID`` is -1 when free and
``NUMA_NODE`` is ``-`` when unknown. pyone parses the pool into bindings; this module turns
them into plain values.

On a host set up for vGPU, 7.0's probe (src/im_mad/remotes/node-probes.d/pci.rb) skips the
physical GPU and lists each NVIDIA virtual function with a ``UUID``, its ``PROFILES`` and
``MDEV_MODE``: those are vGPU slots, not passthrough GPUs, and are never counted as free GPUs.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass

NVIDIA_VENDORS = ("10de",)
"""pci.conf's ``:nvidia_vendors:`` default."""

# Host states (pyone HOST_STATES): the scheduler places no VM on these.
_UNUSABLE_STATES = {
    3: "ERROR",
    4: "DISABLED",
    5: "MONITORING_ERROR",
    7: "MONITORING_DISABLED",
    8: "OFFLINE",
}
_ADDRESS = re.compile(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})[.:]([0-7])$")


@dataclass(frozen=True)
class PciDevice:
    host_id: int
    host: str
    host_usable: bool
    short_address: str
    address: str
    vendor: str
    device: str
    device_class: str
    vendor_name: str
    device_name: str
    class_name: str
    numa_node: str
    vmid: int
    profiles: str = ""  # vGPU profiles of an NVIDIA virtual function
    uuid: str = ""

    @property
    def is_vgpu(self) -> bool:
        """An NVIDIA vGPU virtual function: the probe gives only those a UUID and PROFILES."""
        return self.is_nvidia and bool(self.uuid or self.profiles)

    @property
    def free(self) -> bool:
        return self.vmid < 0

    @property
    def model(self) -> str:
        return f"{self.vendor}:{self.device}"

    @property
    def is_nvidia(self) -> bool:
        return self.vendor in NVIDIA_VENDORS

    @property
    def is_gpu(self) -> bool:
        """An NVIDIA display controller (class 03xx: VGA 0300, 3D 0302) for passthrough: not its
        audio function, not a vGPU virtual function."""
        return self.is_nvidia and self.device_class.startswith("03") and not self.is_vgpu

    @property
    def schedulable(self) -> bool:
        return self.free and self.host_usable

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "model": self.model,
            "gpu": self.is_gpu,
            "vgpu": self.is_vgpu,
            "free": self.free,
        }


def normalize_address(text: str) -> str | None:
    """``41:00.0``, ``0000:41:00.0`` or OpenNebula's ``0000:41:00:0`` -> ``41:00.0``; else None."""
    match = _ADDRESS.match(text.strip().lower())
    return f"{match[2]}:{match[3]}.{match[4]}" if match else None


def devices(pool: object) -> list[PciDevice]:
    """Every PCI device of every host in a pyone HOST_POOL binding, in pool order."""
    out: list[PciDevice] = []
    for host in getattr(pool, "HOST", None) or []:
        share = getattr(host, "HOST_SHARE", None)
        pci = getattr(share, "PCI_DEVICES", None)
        usable = int(host.STATE) not in _UNUSABLE_STATES
        for p in getattr(pci, "PCI", None) or []:
            out.append(
                PciDevice(
                    host_id=int(host.ID),
                    host=str(host.NAME),
                    host_usable=usable,
                    short_address=_text(p.SHORT_ADDRESS).lower(),
                    address=_text(p.ADDRESS),
                    vendor=_text(p.VENDOR).lower(),
                    device=_text(p.DEVICE).lower(),
                    device_class=_text(p.CLASS).lower(),
                    vendor_name=_text(p.VENDOR_NAME),
                    device_name=_text(p.DEVICE_NAME),
                    class_name=_text(p.CLASS_NAME),
                    numa_node=_text(p.NUMA_NODE) or "-",
                    vmid=int(p.VMID) if p.VMID is not None else -1,
                    profiles=_text(getattr(p, "PROFILES", None)),
                    uuid=_text(getattr(p, "UUID", None)),
                )
            )
    return out


def host_attribute(pool: object, hosts: tuple[str, ...], name: str) -> str | None:
    """The first non-empty `name` in the TEMPLATE of `hosts` (pyone gives TEMPLATE as a dict)."""
    for host in getattr(pool, "HOST", None) or []:
        template = getattr(host, "TEMPLATE", None)
        if str(host.NAME) in hosts and isinstance(template, dict) and template.get(name):
            return str(template[name]).strip()
    return None


def host_states(pool: object) -> dict[str, str]:
    """host name -> ``usable`` or the state that keeps the scheduler away."""
    return {
        str(h.NAME): _UNUSABLE_STATES.get(int(h.STATE), "usable")
        for h in getattr(pool, "HOST", None) or []
    }


@dataclass(frozen=True)
class ModelCount:
    model: str
    name: str
    device_class: str
    total: int
    free: int  # free on hosts the scheduler can use

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def gpu_models(devs: list[PciDevice]) -> list[ModelCount]:
    """Per NVIDIA GPU model: how many there are and how many are free on usable hosts."""
    gpus = [d for d in devs if d.is_gpu]
    total = Counter(d.model for d in gpus)
    free = Counter(d.model for d in gpus if d.schedulable)
    first = {d.model: d for d in reversed(gpus)}
    return [
        ModelCount(m, first[m].device_name, first[m].device_class, total[m], free[m])
        for m in sorted(total)
    ]


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()
