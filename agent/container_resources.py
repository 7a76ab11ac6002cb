"""Shared memory and ulimits for the SuperNode (and a SuperExec): what NVIDIA's framework
containers ask for, sized to this VM.

NVIDIA's PyTorch/TensorFlow containers warn at start when run with Docker's defaults ("The
SHMEM allocation limit is set to the default of 64MB. This may be insufficient ... NVIDIA
recommends the use of the following flags: ... --ipc=host --ulimit memlock=-1 --ulimit
stack=67108864"), and its user guide runs them with `--shm-size=1g --ulimit memlock=-1
--ulimit stack=67108864`. DataLoader workers hand batches over in /dev/shm and NCCL keeps its
buffers there: with 64 MB they die with "bus error" or "insufficient shared memory".

The agent does not share the host's IPC namespace (a container of its own): /dev/shm gets a
size instead, half the VM's memory, the size a tmpfs takes by default (which is what /dev/shm
is with --ipc=host): NVIDIA's 1 GiB and more from a 2 GiB VM up, never below Docker's 64 MB.
The tmpfs only uses memory for what is written to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.paths import Root

DOCKER_DEFAULT_SHM = 64 * 2**20
NVIDIA_SHM = 2**30  # --shm-size=1g in NVIDIA's framework container guide
MEMLOCK_UNLIMITED = -1  # --ulimit memlock=-1: pinned host memory (cudaHostAlloc), GPUDirect
STACK_BYTES = 67108864  # --ulimit stack=67108864 (64 MiB)
# runc's refusal when the engine may not raise a hard limit (no CAP_SYS_RESOURCE: rootless
# Docker, a confined dockerd): "error setting rlimit type 8: operation not permitted".
RLIMIT_REFUSED = "error setting rlimit"


@dataclass(frozen=True)
class ContainerResources:
    shm_size: int  # bytes (the Engine API's HostConfig.ShmSize)
    ulimits: tuple[tuple[str, int, int], ...]  # (name, soft, hard)
    why: str

    def host_config(self) -> dict:
        """`ShmSize` and `Ulimits` as the Engine API's HostConfig takes them (agent/engine.py)."""
        return {
            "ShmSize": self.shm_size,
            "Ulimits": [{"Name": n, "Soft": s, "Hard": h} for n, s, h in self.ulimits],
        }

    def without_ulimits(self) -> ContainerResources:
        """The same shared memory without the raised limits: the retry after RLIMIT_REFUSED."""
        return ContainerResources(self.shm_size, (), f"{self.why}; ulimits refused by the engine")


def mem_total(root: Root) -> int | None:
    """MemTotal of /proc/meminfo under the root, in bytes; None when unreadable."""
    try:
        text = root.proc.joinpath("meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "MemTotal":
            number, _, unit = value.strip().partition(" ")
            if number.isdigit():
                return int(number) * (1024 if unit.lower() == "kb" else 1)
    return None


def container_resources(memory_bytes: int | None) -> ContainerResources:
    """Shared memory sized to the VM (half its memory, never below Docker's 64 MB), memlock
    unlimited, a 64 MiB stack; NVIDIA's 1 GiB when the VM's memory is unknown."""
    ulimits = (
        ("memlock", MEMLOCK_UNLIMITED, MEMLOCK_UNLIMITED),
        ("stack", STACK_BYTES, STACK_BYTES),
    )
    if not memory_bytes:
        return ContainerResources(NVIDIA_SHM, ulimits, "VM memory unknown: NVIDIA's 1 GiB")
    shm = max(memory_bytes // 2 // 2**20 * 2**20, DOCKER_DEFAULT_SHM)
    why = f"half of the VM's {memory_bytes / 2**30:.1f} GiB memory"
    return ContainerResources(shm, ulimits, why)
