"""What differs between the OpenNebula releases the operator commands support (6.10, 7.x).

Checked in OpenNebula/one at the release tags:
- Firmware (src/vmm/LibVirtDriverKVM.cc): 6.10.0 accepts ``OS/FIRMWARE`` empty, ``BIOS`` or a
  path listed in ``OVMF_UEFIS`` (host template, cluster template, then the front-end's
  vmm_exec_kvm.conf), else "FIRMWARE '...' not allowed."; 7.0.0 adds ``UEFI`` (libvirt's
  firmware auto-selection).
- OneFlow service templates (src/oca/ruby/opennebula/flow/service_template.rb): 6.10.0's schema
  requires each role's ``vm_template`` and names inputs ``custom_attrs``; 7.0.0 requires
  ``type`` and ``template_id`` and names them ``user_inputs``, but converts a body whose roles
  all have ``vm_template`` (ServiceTemplate.old_format? / convert_template) before validating,
  at creation and at instantiation. So the 6.10 shape is the one both accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VMM_KVM_CONF = "/etc/one/vmm_exec/vmm_exec_kvm.conf"
OVMF_DEFAULT = "/usr/share/OVMF/OVMF_CODE.fd"
"""The first x86 entry of OVMF_UEFIS in 6.10.0's shipped vmm_exec_kvm.conf."""

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_OVMF_LINE = re.compile(r'^\s*OVMF_UEFIS\s*=\s*"([^"]*)"', re.M)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``one.system.version``'s answer ("6.10.0", "7.0.1") as numbers; None if it is not one."""
    match = _VERSION.match(str(text).strip())
    return (int(match[1]), int(match[2]), int(match[3] or 0)) if match else None


def has_uefi_keyword(version: tuple[int, int, int]) -> bool:
    return version >= (7, 0, 0)


@dataclass(frozen=True)
class Firmware:
    value: str  # what OS/FIRMWARE gets
    source: str  # where it came from, for the operator
    warning: str = ""


def firmware_for(
    version: tuple[int, int, int], ovmf_uefis: str | None, ovmf_source: str
) -> Firmware:
    """UEFI firmware the version accepts: the keyword on 7.0+, a listed OVMF path on 6.10."""
    if has_uefi_keyword(version):
        return Firmware("UEFI", "OpenNebula 7.0+ firmware auto-selection")
    paths = (ovmf_uefis or "").replace('"', "").split()
    x86 = [p for p in paths if "AAVMF" not in p]
    plain = [p for p in x86 if "secboot" not in p.lower()]  # Secure Boot stays off
    if plain or x86:
        return Firmware((plain or x86)[0], f"OVMF_UEFIS of {ovmf_source}")
    return Firmware(
        OVMF_DEFAULT,
        "6.10's default OVMF_UEFIS",
        f"no OVMF_UEFIS found ({ovmf_source}); {OVMF_DEFAULT} is 6.10's default: check that "
        f"the front-end's {VMM_KVM_CONF} lists it, or give --ovmf PATH",
    )


def ovmf_from_conf(text: str) -> str | None:
    """The OVMF_UEFIS value of a vmm_exec_kvm.conf."""
    match = _OVMF_LINE.search(text)
    return match[1] if match else None
