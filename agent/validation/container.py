"""Stage container: `nvidia-smi -L` in the SuperNode image, started with the GPU request the
SuperNode gets, lists exactly the GPUs it should."""

from __future__ import annotations

from agent.errors import Problem
from agent.gpu import probe
from agent.outcome import StageStatus, problem
from agent.plan import ImageFacts
from agent.stages import Check


def check(
    engine,
    image: ImageFacts,
    uuids: tuple[str, ...] | None,
    expected: tuple[str, ...],
    allowed: set[str],
) -> Check:
    """`uuids`: the request (None: all GPUs); `allowed`: what may show up beyond `expected`."""
    from agent import engine as docker

    if engine is None:
        return Check.failed(problem("docker_unavailable", "docker"))
    if not image.present:
        return Check.failed(docker.missing_image(image.reference))
    result = docker.run_probe(engine, image.reference, ["nvidia-smi", "-L"], uuids)
    if result.problem:
        return Check.failed(result.problem)
    if result.exit_code != 0:
        return Check.failed(docker.gpu_problem(result.output))
    return compare(image.reference, probe.listed_uuids(result.output), expected, allowed)


def compare(image: str, seen: tuple[str, ...], expected: tuple[str, ...], allowed: set[str]):
    allowed = set(expected) | allowed
    missing = [u for u in expected if u not in seen]
    extra = [u for u in seen if u not in allowed]
    detail = f"nvidia-smi -L in {image}: {', '.join(seen) or 'no GPU'}"
    if not seen or missing or extra:
        return Check.failed(
            Problem(
                "container_gpu_mismatch",
                "container",
                f"the container sees {', '.join(seen) or 'no GPU'}; expected "
                f"{', '.join(expected)}" + (f"; unexpected {', '.join(extra)}" if extra else ""),
                "check NVIDIA_VISIBLE_DEVICES in the image (it must not override the request) "
                "and the toolkit's configuration",
            ),
            detail,
        )
    return Check(StageStatus.OK, detail)
