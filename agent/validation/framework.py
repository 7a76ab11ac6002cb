"""Stage framework: torch inside the SuperNode image seeing the GPUs (a probe container), and
the image's CUDA requirement judged by the toolkit's own rules (`agent.gpu.cuda`).

The probe's result is read first: torch that runs a CUDA kernel is the proof, whatever the
image's labels or torch's CUDA build say (data-centre GPUs run newer CUDA through the image's
cuda-compat). The requirement check explains a probe that failed or could not tell.
"""

from __future__ import annotations

from agent.errors import Problem
from agent.gpu import NvmlFacts, NvmlGpu, probe
from agent.gpu.cuda import (
    CudaCheck,
    DriverProperties,
    check_image,
    cuda_version_text,
    toolkit_brand,
)
from agent.outcome import StageStatus, problem
from agent.plan import ImageFacts
from agent.stages import Check
from agent.validation.wording import first_lines


def check(
    engine,
    image: ImageFacts,
    nvml: NvmlFacts,
    targets: list[NvmlGpu],
    uuids: tuple[str, ...] | None,
    mode: str,
) -> Check:
    """`targets`: the GPUs the container gets; `mode`: the toolkit mode serving --gpus."""
    from agent import engine as docker

    if engine is None:
        return Check.failed(problem("docker_unavailable", "docker"))
    if not image.present:
        return Check.failed(docker.missing_image(image.reference))
    argv = ["python3", "-c", probe.TORCH_PROBE]
    result = docker.run_probe(engine, image.reference, argv, uuids)
    requirement = check_image(image.env, driver_properties(nvml, targets), mode=mode)
    if result.problem and result.problem.name != "container_tool_missing":
        refused = _unmet(requirement)
        return Check.failed(refused or result.problem)
    found = probe.parse_torch_probe(result.output) if not result.problem else None
    return interpret(found, nvml.cuda_driver_version, requirement, result.output)


def driver_properties(nvml: NvmlFacts, targets: list[NvmlGpu]) -> list[DriverProperties]:
    """What nvidia-container-cli compares the image's requirements with, one entry per GPU."""
    cuda = cuda_version_text(nvml.cuda_driver_version)
    return [
        DriverProperties(nvml.driver_version, cuda, toolkit_brand(g.brand), g.compute_capability)
        for g in targets
    ]


def interpret(
    found: dict | None, driver_cuda: int | None, requirement: CudaCheck, output: str
) -> Check:
    """The framework verdict from the probe's JSON line (None: python or the probe failed)."""
    if found and found.get("torch") and found.get("cuda_build") and found.get("available"):
        detail = (
            f"torch {found['torch']} (CUDA {found['cuda_build']}) sees {found.get('count')} "
            f"device(s): {', '.join(found.get('names') or [])}; image: {requirement.message}"
        )
        return Check(StageStatus.OK, detail)
    unmet = _unmet(requirement)
    if unmet is not None:
        return Check.failed(unmet)
    return _unproven(found, driver_cuda, requirement, output)


def _unproven(
    found: dict | None, driver_cuda: int | None, requirement: CudaCheck, output: str
) -> Check:
    need = f"image: {requirement.message}; "
    if found is None:
        return Check(
            StageStatus.WARN,
            f"{need}no python in the image could run the probe: {first_lines(output)}",
            "the ClientApp's framework was not checked",
        )
    if not found.get("torch"):
        return Check(
            StageStatus.WARN,
            f"{need}torch is not installed in the SuperNode image: CUDA in the ML framework "
            "not checked",
            "if the ClientApp runs elsewhere (FL_ISOLATION=process) check that image; else "
            "install a CUDA build of torch into the image",
        )
    build = found.get("cuda_build")
    if not build:
        return Check.failed(
            Problem(
                "torch_cpu_build",
                "framework",
                f"torch {found['torch']} in the image is a CPU-only build",
                "install a CUDA build of torch (https://download.pytorch.org/whl/cuXYZ) not "
                "newer than the driver's CUDA",
            )
        )
    major, minor = (int(x) for x in str(build).split(".")[:2])
    if driver_cuda and major > cuda_pair(driver_cuda)[0]:
        return Check.failed(cuda_too_old(f"torch {found['torch']}", (major, minor), driver_cuda))
    return Check.failed(
        Problem(
            "framework_cuda_unavailable",
            "framework",
            f"torch {found['torch']} (CUDA {build}) sees no usable GPU: "
            f"{found.get('error', 'torch.cuda.is_available() is False')}",
            "check the container stage's output and the driver's CUDA version",
        )
    )


def _unmet(requirement: CudaCheck) -> Problem | None:
    """The toolkit's refusal of the image (or, where it does not check, the CUDA error ahead)."""
    if requirement.satisfied:
        return None
    how = "the toolkit refuses the image" if requirement.enforced else "CUDA will fail"
    detail = (
        f"{how}: {requirement.message} (NVIDIA_REQUIRE_*: {' | '.join(requirement.requirements)})"
    )
    return problem("cuda_driver_too_old", "framework", detail)


def cuda_too_old(what: str, needed: tuple[int, int], driver_cuda: int) -> Problem:
    have = cuda_pair(driver_cuda)
    detail = (
        f"{what} needs CUDA {needed[0]}.{needed[1]} but the driver supports up to "
        f"{have[0]}.{have[1]}"
    )
    return problem("cuda_driver_too_old", "framework", detail)


def cuda_pair(version: int) -> tuple[int, int]:
    return version // 1000, version % 1000 // 10
