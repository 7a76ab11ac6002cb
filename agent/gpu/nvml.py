"""GPU inventory through NVML (the real `pynvml`, imported lazily), errors turned into causes.

NVML is the primary source: nvidia-smi's output "is not guaranteed to be backwards compatible",
NVML and its Python bindings are. Every NVML error class maps to a `Problem` with the cause and
the fix an operator needs (`_CAUSES` below). GPUs are keyed by UUID: NVML's index may
differ from CUDA's.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.errors import Problem
from agent.outcome import PROBLEMS

# NVML return codes (nvml.h); pynvml raises NVMLError subclasses carrying them as `.value`.
SUCCESS = 0
NOT_SUPPORTED = 3
NOT_FOUND = 6
INVALID_ARGUMENT = 2
IRQ_ISSUE = 11
FUNCTION_NOT_FOUND = 13
ARGUMENT_VERSION_MISMATCH = 25
GPU_NOT_FOUND = 28
UNKNOWN = 999
MIG_ENABLED = 1
FABRIC_STATES = {0: "not_supported", 1: "not_started", 2: "in_progress", 3: "completed"}
FABRIC_V = "nvmlDeviceGetGpuFabricInfoV"  # R550+: versioned struct
FABRIC_V1 = "nvmlDeviceGetGpuFabricInfo"  # R525+: the only one on R535

_DRIVER_FIX = (
    "install the NVIDIA driver that supports this GPU in the VM image (Debian/Ubuntu: the "
    "nvidia-driver or cuda-drivers packages, or NVIDIA's .run installer), then reboot"
)
# code -> (problem name, cause, fix)
_CAUSES: dict[int, tuple[str, str, str]] = {
    12: (
        "nvml_library_not_found",
        "libnvidia-ml.so.1 cannot be loaded: no NVIDIA driver userspace is installed",
        _DRIVER_FIX,
    ),
    9: ("gpu_driver_not_loaded", *PROBLEMS["gpu_driver_not_loaded"]),
    18: (
        "gpu_driver_mismatch",
        "the NVML library and the loaded kernel module are different driver versions "
        "(the driver was updated without a reboot)",
        "reboot the VM so the new kernel module loads (or unload and reload the nvidia "
        "modules); hold the driver packages so unattended upgrades cannot do this again",
    ),
    15: (
        "gpu_lost",
        "the GPU is lost (it fell off the bus)",
        "reboot the VM; if it happens again check the host: power, PCIe slot, and XID errors "
        "in the kernel log",
    ),
    16: (
        "gpu_reset_required",
        "the GPU requires a reset",
        "reboot the VM; in a passthrough VM the host may have to reset the device "
        "(MIG mode changes on pre-Hopper GPUs need this)",
    ),
    4: (
        "nvml_no_permission",
        "NVML was refused access to the GPU",
        "run the agent as root; check the permissions of /dev/nvidia* and SELinux labels",
    ),
    17: (
        "nvml_blocked_by_os",
        "the operating system blocked the NVML request",
        "run the agent as root and check security modules (SELinux, AppArmor) and cgroups",
    ),
    13: (
        "nvml_function_not_found",
        "the installed driver's NVML lacks a function the agent needs (driver too old)",
        "install a driver of branch 535 or newer",
    ),
    14: (
        "gpu_inforom_corrupted",
        "the GPU's infoROM is corrupted",
        "have the GPU serviced; it should not be used for training",
    ),
    8: (
        "gpu_insufficient_power",
        "the GPU reports insufficient external power",
        "check the GPU's power cables on the host",
    ),
    10: ("nvml_timeout", "NVML timed out talking to the GPU", "reboot the VM; check the host"),
    11: (
        "gpu_irq_issue",
        "the NVIDIA kernel module detected an interrupt problem with the GPU: in a passthrough "
        "VM its interrupts (MSI/MSI-X) are not delivered, typically because the host has no "
        "interrupt remapping or the guest fell back to legacy INTx",
        "on the KVM host enable interrupt remapping (VT-d/AMD-Vi with IR in the firmware; "
        "`fl-agent host-check` checks it) and do not set vfio_iommu_type1 "
        "allow_unsafe_interrupts; in the VM keep MSI on (no `pci=nomsi`, no NVreg_EnableMSI=0)",
    ),
    28: (
        "nvml_no_gpus",
        "the NVIDIA driver is loaded but found no GPU it can drive",
        "check that the GPU is attached to the VM and bound to the nvidia driver "
        "(`lspci -nnk -d 10de:`); read the kernel log for NVRM lines",
    ),
    999: (
        "nvml_unknown_error",
        "NVML failed with an unknown error",
        "read the kernel log for NVRM lines; reboot the VM; check the host's GPU",
    ),
}


def problem_for(code: int, text: str, subject: str = "nvml") -> Problem:
    """The cause and fix for an NVML error code (`text` is NVML's own wording)."""
    name, cause, fix = _CAUSES.get(
        code,
        ("nvml_error", "NVML failed", "read the kernel log for NVRM lines; reboot the VM"),
    )
    return Problem(name, subject, f"{cause} (NVML: {text}, code {code})", fix)


@dataclass(frozen=True)
class MigDevice:
    uuid: str  # MIG-<uuid>
    gpu_instance_id: int | None
    compute_instance_id: int | None
    memory_total: int | None
    profile: str | None = None  # "1g.10gb", "1c.2g.20gb"; None: NVML did not say


MIG_MAX_SLICES = 8
"""The most slices a MIG profile has (go-nvlib knows GPU instance profiles of 1..8 slices)."""
MIG_MEMORY_FRACTIONS = 8
_MIB = 2**20
_GIB = 2**30


def mig_profile_name(
    gi_slices: int, ci_slices: int, memory_mib: int, parent_memory: int | None
) -> str | None:
    """A MIG device's profile name as NVIDIA's tools write it, from nvmlDeviceGetAttributes_v2
    (gpuInstanceSliceCount, computeInstanceSliceCount, memorySizeMB) and the parent GPU's
    total memory in bytes; None for values no MIG device has.

    As NVIDIA go-nvlib mig_profile.go computes it (getMigMemorySizeGB, MigProfileInfo.String):
    the device's share of the parent's memory is rounded up to eighths, times the parent's
    memory in whole GiB rounded up, rounded to the nearest GB (halves away from zero, Go's
    math.Round); "<g>g.<gb>gb" when the compute instance has all of its GPU instance's
    slices, "<c>c.<g>g.<gb>gb" when fewer. go-nvlib reads the slice counts from the GPU and
    compute instance profile IDs, which also name the media-extension variants (+me, -me,
    +gfx); the attributes carry only the counts, so those suffixes are not given here.
    """
    if not (0 < ci_slices <= gi_slices <= MIG_MAX_SLICES) or not parent_memory:
        return None
    if not 0 < memory_mib * _MIB <= parent_memory:
        return None
    share = float(memory_mib) * _MIB / float(parent_memory)
    share = math.ceil(share * MIG_MEMORY_FRACTIONS) / MIG_MEMORY_FRACTIONS
    gb = share * float((parent_memory + _GIB - 1) // _GIB)
    rounded = math.floor(gb) + (gb - math.floor(gb) >= 0.5)
    if ci_slices == gi_slices:
        return f"{gi_slices}g.{rounded}gb"
    return f"{ci_slices}c.{gi_slices}g.{rounded}gb"


@dataclass(frozen=True)
class Fabric:
    """NVLink fabric registration (HGX/NVSwitch systems); CUDA fails with 802 until completed."""

    state: str  # not_supported | not_started | in_progress | completed
    status: int  # the NVML return code of the registration once completed
    api: str = FABRIC_V  # the NVML call that answered (FABRIC_V1 on R535)

    @property
    def ready(self) -> bool:
        return self.state == "completed" and self.status == SUCCESS


@dataclass(frozen=True)
class NvmlGpu:
    index: int
    uuid: str | None
    name: str | None = None
    pci_bus_id: str | None = None  # 00000000:01:00.0
    memory_total: int | None = None  # bytes
    compute_capability: str | None = None  # "9.0"
    mig_mode: bool | None = None  # None: the GPU has no MIG
    mig_pending: bool | None = None
    mig_devices: tuple[MigDevice, ...] = ()
    fabric: Fabric | None = None  # None: no fabric on this GPU (or a driver too old to say)
    brand: int | None = None  # nvmlBrandType_t (14 = NVIDIA: H100/H200/A100)
    problem: Problem | None = None  # this GPU could not be read


@dataclass(frozen=True)
class NvmlFacts:
    available: bool  # nvmlInit succeeded
    error: str | None = None  # NVML's error class when it did not (LibraryNotFound, ...)
    problem: Problem | None = None
    driver_version: str | None = None
    cuda_driver_version: int | None = None  # 1000*major + 10*minor (12040 = 12.4)
    gpus: tuple[NvmlGpu, ...] = field(default=())

    @property
    def cuda_version(self) -> str | None:
        v = self.cuda_driver_version
        return f"{v // 1000}.{v % 1000 // 10}" if v else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["cuda_version"] = self.cuda_version
        return data


def read_nvml() -> NvmlFacts:
    """Init NVML, read the inventory, shut down. Never raises for NVML's own errors."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return NvmlFacts(False, _class(exc), problem_for(exc.value, str(exc)))
    driver = cuda = None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = optional_call(pynvml, pynvml.nvmlSystemGetCudaDriverVersion)
        count = pynvml.nvmlDeviceGetCount()
        gpus = tuple(_gpu(pynvml, i) for i in range(count))
        return NvmlFacts(True, None, None, driver, cuda, gpus)
    except pynvml.NVMLError as exc:
        return NvmlFacts(True, _class(exc), problem_for(exc.value, str(exc)), driver, cuda)
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def read_fabric(uuids: tuple[str, ...]) -> dict[str, Fabric | None]:
    """Re-read the fabric state of these GPUs (polled while registration is in progress)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        return {u: _fabric(pynvml, pynvml.nvmlDeviceGetHandleByUUID(u)) for u in uuids}
    finally:
        pynvml.nvmlShutdown()


def _gpu(nv: Any, index: int) -> NvmlGpu:
    uuid = None
    try:
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        uuid = nv.nvmlDeviceGetUUID(handle)
        memory = optional_call(nv, nv.nvmlDeviceGetMemoryInfo, handle)
        cc = optional_call(nv, nv.nvmlDeviceGetCudaComputeCapability, handle)
        mig = optional_call(nv, nv.nvmlDeviceGetMigMode, handle)
        enabled = mig is not None and mig[0] == MIG_ENABLED
        total = memory.total if memory else None
        return NvmlGpu(
            index=index,
            uuid=uuid,
            name=nv.nvmlDeviceGetName(handle),
            pci_bus_id=_text(nv.nvmlDeviceGetPciInfo(handle).busId),
            memory_total=total,
            compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
            mig_mode=None if mig is None else enabled,
            mig_pending=None if mig is None else mig[1] == MIG_ENABLED,
            mig_devices=_mig_devices(nv, handle, total) if enabled else (),
            fabric=_fabric(nv, handle),
            brand=optional_call(nv, nv.nvmlDeviceGetBrand, handle),
        )
    except nv.NVMLError as exc:
        return NvmlGpu(index, uuid, problem=problem_for(exc.value, str(exc), f"GPU {index}"))


def _mig_devices(nv: Any, handle: Any, parent_memory: int | None) -> tuple[MigDevice, ...]:
    """The MIG devices of a GPU in MIG mode; empty slots are skipped like go-nvlib does."""
    found = []
    for slot in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nv.NVMLError as exc:
            if exc.value in (NOT_FOUND, INVALID_ARGUMENT):
                continue
            raise
        memory = optional_call(nv, nv.nvmlDeviceGetMemoryInfo, mig)
        found.append(
            MigDevice(
                uuid=nv.nvmlDeviceGetUUID(mig),
                gpu_instance_id=optional_call(nv, nv.nvmlDeviceGetGpuInstanceId, mig),
                compute_instance_id=optional_call(nv, nv.nvmlDeviceGetComputeInstanceId, mig),
                memory_total=memory.total if memory else None,
                profile=_mig_profile(nv, mig, parent_memory),
            )
        )
    return tuple(found)


def _mig_profile(nv: Any, mig: Any, parent_memory: int | None) -> str | None:
    """The profile from the MIG device's attributes; None where the driver or the bindings
    (nvidia-ml-py before the call existed) do not answer."""
    call = getattr(nv, "nvmlDeviceGetAttributes_v2", None)
    attributes = optional_call(nv, call, mig) if call else None
    if attributes is None:
        return None
    return mig_profile_name(
        int(attributes.gpuInstanceSliceCount),
        int(attributes.computeInstanceSliceCount),
        int(attributes.memorySizeMB),
        parent_memory,
    )


def _fabric(nv: Any, handle: Any) -> Fabric | None:
    """Fabric state: the versioned call (R550+), else the R525+ call; None where there is none.

    The structures are declared here from nvml.h, not taken from the bindings: nvidia-ml-py
    12.535's nvmlGpuFabricInfo_t has an 80-byte cluster UUID (nvml.h: 16), and every
    nvidia-ml-py reads the `unsigned char` state as a 4-byte int. A driver without the V call
    (R535), bindings without it, or a driver refusing the struct's version fall back to v1.
    """
    try:
        info = _FabricInfoV2(version=FABRIC_INFO_V2)
        _call(nv, FABRIC_V, handle, info)
        api = FABRIC_V
    except (nv.NVMLError, AttributeError) as exc:
        if getattr(exc, "value", FUNCTION_NOT_FOUND) not in (
            FUNCTION_NOT_FOUND,
            ARGUMENT_VERSION_MISMATCH,
        ):
            return _fabric_error(nv, exc)
        info, api = _FabricInfoV1(), FABRIC_V1
        try:
            _call(nv, FABRIC_V1, handle, info)
        except (nv.NVMLError, AttributeError) as exc_v1:
            return _fabric_error(nv, exc_v1)
    state = FABRIC_STATES.get(info.state, f"unknown_{info.state}")
    return None if state == "not_supported" else Fabric(state, int(info.status), api)


def _fabric_error(nv: Any, exc: Exception) -> None:
    if isinstance(exc, AttributeError) or exc.value in (NOT_SUPPORTED, FUNCTION_NOT_FOUND):
        return None
    raise exc


class _FabricInfoV1(ctypes.Structure):
    """nvmlGpuFabricInfo_t (nvml.h, CUDA 12.2+)."""

    _fields_ = [
        ("clusterUuid", ctypes.c_ubyte * 16),
        ("status", ctypes.c_int),
        ("cliqueId", ctypes.c_uint32),
        ("state", ctypes.c_ubyte),
    ]


class _FabricInfoV2(ctypes.Structure):
    """nvmlGpuFabricInfo_v2_t (nvml.h, CUDA 12.4+): `version` first, `healthMask` last."""

    _fields_ = [
        ("version", ctypes.c_uint),
        ("clusterUuid", ctypes.c_ubyte * 16),
        ("status", ctypes.c_int),
        ("cliqueId", ctypes.c_uint32),
        ("state", ctypes.c_ubyte),
        ("healthMask", ctypes.c_uint32),
    ]


# NVML_STRUCT_VERSION(GpuFabricInfo, 2): sizeof | version << 24
FABRIC_INFO_V2 = ctypes.sizeof(_FabricInfoV2) | 2 << 24


def _call(nv: Any, name: str, handle: Any, info: ctypes.Structure) -> None:
    """Call an NVML function by name with our own structure, whatever the bindings declare."""
    wrapper = getattr(nv, name, None)
    if wrapper is not None:
        wrapper(handle, ctypes.byref(info))
        return
    function = nv._nvmlGetFunctionPointer(name)  # raises FUNCTION_NOT_FOUND when absent
    nv._nvmlCheckReturn(function(handle, ctypes.byref(info)))


def optional_call(nv: Any, fn: Any, *args: Any) -> Any:
    """Call an NVML query that some GPUs or drivers do not support; None then."""
    try:
        return fn(*args)
    except nv.NVMLError as exc:
        if exc.value in (NOT_SUPPORTED, FUNCTION_NOT_FOUND):
            return None
        raise


def _class(exc: Exception) -> str:
    return type(exc).__name__.removeprefix("NVMLError_")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
