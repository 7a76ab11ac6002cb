"""Stage framework: the image's CUDA requirement against the driver, and torch inside the
SuperNode image seeing the GPUs (a probe container)."""

from __future__ import annotations

from agent.errors import Problem
from agent.gpu import probe
from agent.outcome import StageStatus, problem
from agent.plan import ImageFacts
from agent.stages import Check
from agent.validation.wording import first_lines


def check(
    engine, image: ImageFacts, driver_cuda: int | None, uuids: tuple[str, ...] | None
) -> Check:
    from agent import engine as docker

    if engine is None:
        return Check.failed(problem("docker_unavailable", "docker"))
    if not image.present:
        return Check.failed(docker.missing_image(image.reference))
    required = probe.image_cuda_requirement(list(image.env))
    if required and driver_cuda and required > cuda_pair(driver_cuda):
        return Check.failed(cuda_too_old("NVIDIA_REQUIRE_CUDA", required, driver_cuda))
    argv = ["python3", "-c", probe.TORCH_PROBE]
    result = docker.run_probe(engine, image.reference, argv, uuids)
    if result.problem and result.problem.name != "container_tool_missing":
        return Check.failed(result.problem)
    found = probe.parse_torch_probe(result.output) if not result.problem else None
    return interpret(found, driver_cuda, required, result.output)


def interpret(
    found: dict | None, driver_cuda: int | None, required: tuple[int, int] | None, output: str
) -> Check:
    """The framework verdict from the probe's JSON line (None: python or the probe failed)."""
    need = f"image requires CUDA {required[0]}.{required[1]}; " if required else ""
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
    if not found.get("available"):
        return Check.failed(
            Problem(
                "framework_cuda_unavailable",
                "framework",
                f"torch {found['torch']} (CUDA {build}) sees no usable GPU: "
                f"{found.get('error', 'torch.cuda.is_available() is False')}",
                "check the container stage's output and the driver's CUDA version",
            )
        )
    detail = (
        f"{need}torch {found['torch']} (CUDA {build}) sees {found.get('count')} device(s): "
        f"{', '.join(found.get('names') or [])}"
    )
    return Check(StageStatus.OK, detail)


def cuda_too_old(what: str, needed: tuple[int, int], driver_cuda: int) -> Problem:
    have = cuda_pair(driver_cuda)
    detail = (
        f"{what} needs CUDA {needed[0]}.{needed[1]} but the driver supports up to "
        f"{have[0]}.{have[1]}"
    )
    return problem("cuda_driver_too_old", "framework", detail)


def cuda_pair(version: int) -> tuple[int, int]:
    return version // 1000, version % 1000 // 10
