"""How the stages word counts, sizes and command output in their details."""

from __future__ import annotations

GIB = 2**30


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def size(n: int) -> str:
    if n >= GIB:
        return f"{n / GIB:.0f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / 1024:.0f} KiB" if n else "unassigned"


def first_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:n]) or "(no output)"


TEMPLATE_FIX = (
    "check the VM template: OS=[FIRMWARE=UEFI, MACHINE=q35], "
    "CPU_MODEL=[MODEL=host-passthrough] and enough 64-bit MMIO for the GPU's BARs"
)
