"""Will the NVIDIA Container Toolkit start this image on this driver? Its own rules, as data.

The toolkit's legacy path (the `nvidia-container-runtime-hook` that Docker's `--gpus` runs)
hands every `NVIDIA_REQUIRE_*` variable of the image to `nvidia-container-cli --require=...`,
which evaluates each one with a small language:

- a requirement is space-separated clauses, ORed; a clause is comma-separated expressions, ANDed;
- an expression is `<property><op><value>` with op one of `= != < <= > >=` and the properties
  `cuda` (the driver's CUDA version, major.minor), `driver` (the driver version), `arch` (the
  GPU's compute capability) and `brand` (the GPU's brand, compared case-insensitively);
  versions compare numerically component by component; an unknown property is an error;
- `NVIDIA_DISABLE_REQUIRE` (a Go boolean: 1, t, true, ...) or `disable-require = true` in the
  toolkit's config turns the check off; `NVIDIA_REQUIRE_JETPACK*` is not passed;
- an image with `CUDA_VERSION` and no (or an empty) `NVIDIA_REQUIRE_CUDA` is a "legacy" image
  and requires `cuda>=<major.minor of CUDA_VERSION>`.

The `brand=...,driver>=535,driver<536` clauses of the CUDA images are how forward compatibility
is expressed: an image built for a newer CUDA than the driver's starts on the long-term driver
branches it lists, where the image's cuda-compat libraries supply the newer CUDA. NVIDIA
supports that only on data-centre GPUs (not GeForce/TITAN). Only the legacy mode checks:
in `cdi`/`jit-cdi` mode (and Docker's CDI path) the toolkit does not look at the variables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

REQUIRE_PREFIX = "NVIDIA_REQUIRE_"
JETPACK_PREFIX = "NVIDIA_REQUIRE_JETPACK"
DISABLE_REQUIRE = "NVIDIA_DISABLE_REQUIRE"
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
_EXPRESSION = re.compile(r"^([^<>=!]*)([<>=!]*)(.*)$", re.DOTALL)
_SEMVER = re.compile(
    r"^v(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
# nvmlBrandType_t -> the name libnvidia-container compares `brand=` against (src/driver.c);
# every other brand (NVIDIA = 14, which H100/H200/A100 report, NVIDIA RTX, ...) is "Unknown".
_TOOLKIT_BRANDS = {1: "Quadro", 2: "Tesla", 3: "NVS", 4: "GRID", 5: "GeForce", 6: "TITAN"}
NO_FORWARD_COMPAT_BRANDS = ("geforce", "titan")
CHECKING_MODES = ("legacy",)


class InvalidExpression(ValueError):
    """nvidia-container-cli's "invalid expression": the hook refuses the container."""


@dataclass(frozen=True)
class DriverProperties:
    """What nvidia-container-cli compares against, for one visible GPU (brand/arch None: none)."""

    driver_version: str | None  # "550.54.15"
    cuda_version: str | None  # the driver's CUDA, "12.4"
    brand: str | None = None  # toolkit_brand(nvmlDeviceGetBrand)
    arch: str | None = None  # compute capability, "9.0"


@dataclass(frozen=True)
class CudaCheck:
    """The toolkit's verdict on an image for this driver.

    satisfied: the rules accept the image (what the legacy hook would decide).
    enforced: the toolkit checks at all in this mode; when False a failed check only predicts a
      CUDA error at run time, never a refused container.
    forward_compat: accepted through a driver-branch clause although the driver's CUDA is older
      than the image's: it runs on the image's cuda-compat libraries.
    message: the toolkit's own wording when refused; else why it is accepted.
    """

    satisfied: bool
    enforced: bool
    forward_compat: bool
    message: str
    requirements: tuple[str, ...] = ()


def toolkit_brand(nvml_brand: int | None) -> str | None:
    """The brand string libnvidia-container uses for an NVML brand code."""
    if nvml_brand is None:
        return None
    return _TOOLKIT_BRANDS.get(nvml_brand, "Unknown")


def cuda_version_text(cuda_driver_version: int | None) -> str | None:
    """NVML's CUDA driver version (12040) as nvidia-container-cli prints it ("12.4")."""
    if not cuda_driver_version:
        return None
    return f"{cuda_driver_version // 1000}.{cuda_driver_version % 100 // 10}"


def image_env(env: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """`KEY=VALUE` items (a container config's Env) as a dict; later items win."""
    if env is None:
        return {}
    if isinstance(env, Mapping):
        return dict(env)
    return dict(item.partition("=")[::2] for item in env)


def image_requirements(env: Mapping[str, str], *, disable_require: bool = False) -> tuple[str, ...]:
    """The requirements the hook passes as `--require` (sorted; the CLI ANDs them).

    Raises InvalidExpression for a legacy image whose CUDA_VERSION is not a version (the hook
    fails on it too).
    """
    if disable_require or env.get(DISABLE_REQUIRE) in _GO_TRUE:
        return ()
    found = [
        value
        for name, value in env.items()
        if name.startswith(REQUIRE_PREFIX) and not name.startswith(JETPACK_PREFIX)
    ]
    legacy_version = env.get("CUDA_VERSION", "")
    if legacy_version and not env.get("NVIDIA_REQUIRE_CUDA"):
        found.append(f"cuda>={_major_minor(legacy_version)}")
    return tuple(sorted(found))


def evaluate(requirement: str, props: DriverProperties) -> bool:
    """One requirement as nvidia-container-cli's dsl_evaluate reads it (OR of AND clauses)."""
    result = True
    for clause in requirement.split(" "):
        if not clause:
            continue
        exhausted = True
        for expression in clause.split(","):
            if not expression:
                continue
            result = _expression(expression, props)
            if not result:
                exhausted = False
                break
        if exhausted:
            break
    return result


def refusal_text(requirement: str) -> str:
    """nvidia-container-cli's message for a requirement that is not met (its first clause)."""
    first = requirement.split(" ", 1)[0]
    if first.startswith("cuda>="):
        return (
            f"unsatisfied condition: {first}, please update your driver to a newer version, "
            "or use an earlier cuda container"
        )
    return f"unsatisfied condition: {first}"


def check_image(
    env: Iterable[str] | Mapping[str, str] | None,
    gpus: Iterable[DriverProperties],
    *,
    mode: str = "legacy",
    disable_require: bool = False,
) -> CudaCheck:
    """Would the toolkit start `env`'s image with these visible GPUs (one entry per GPU)?

    With no GPU entry the requirements are evaluated once without brand/arch (as the CLI does
    when no device is visible). `mode` is the toolkit mode the container runs under.
    """
    variables = image_env(env)
    enforced = mode in CHECKING_MODES
    try:
        requirements = image_requirements(variables, disable_require=disable_require)
    except InvalidExpression as exc:
        return CudaCheck(False, enforced, False, f"requirement error: {exc}")
    if not requirements:
        why = "disabled" if variables.get(DISABLE_REQUIRE) in _GO_TRUE or disable_require else ""
        text = f"no CUDA requirement ({why or 'none declared'})"
        return CudaCheck(True, enforced, False, text, requirements)
    devices = list(gpus)
    for props in devices or [DriverProperties(None, None)]:
        for requirement in requirements:
            try:
                ok = evaluate(requirement, props)
            except InvalidExpression as exc:
                return CudaCheck(False, enforced, False, f"requirement error: {exc}", requirements)
            if not ok:
                message = f"requirement error: {refusal_text(requirement)}"
                return CudaCheck(False, enforced, False, message, requirements)
    compat = _needs_forward_compat(requirements, devices)
    return CudaCheck(True, enforced, compat, _accepted_text(compat, devices), requirements)


def _accepted_text(compat: bool, devices: list[DriverProperties]) -> str:
    if not compat:
        return "the driver meets the image's CUDA requirement"
    brands = {(d.brand or "").lower() for d in devices}
    text = (
        "accepted through a driver-branch clause: the image's CUDA is newer than the driver's "
        "and runs on the image's cuda-compat libraries (forward compatibility)"
    )
    if brands & set(NO_FORWARD_COMPAT_BRANDS):
        text += "; NVIDIA supports that only on data-centre GPUs, so CUDA will refuse this GPU"
    return text


def _needs_forward_compat(requirements: tuple[str, ...], devices: list[DriverProperties]) -> bool:
    """The `cuda>=` floor is above the driver's CUDA, yet another clause accepted the image."""
    for props in devices or [DriverProperties(None, None)]:
        for requirement in requirements:
            floor = requirement.split(" ", 1)[0]
            if floor.startswith("cuda") and not _expression(floor, props):
                return True
    return False


def _expression(expression: str, props: DriverProperties) -> bool:
    name, op, value = _EXPRESSION.match(expression).groups()
    if not name or op not in _OPERATORS or not value:
        raise InvalidExpression("invalid expression")
    actual = {
        "cuda": props.cuda_version,
        "driver": props.driver_version,
        "arch": props.arch,
        "brand": props.brand,
    }
    rule = name.lower()
    if rule not in actual:
        raise InvalidExpression("invalid expression")
    if actual[rule] is None:  # not known (no device visible): the CLI assumes it is fine
        return True
    compare = _compare_string if rule == "brand" else _compare_version
    return compare(actual[rule], op, value)


def _compare_version(actual: str, op: str, wanted: str) -> bool:
    """dsl_compare_version: numeric components; trailing `.0`s are insignificant."""
    if not _numeric(actual) or not _numeric(wanted):
        raise InvalidExpression("invalid expression")
    left = [int(p) for p in actual.split(".") if p]
    right = [int(p) for p in wanted.split(".") if p]
    for a, b in zip(left, right, strict=False):
        if a != b:
            return {"=": False, "!=": True, "<": a < b, "<=": a < b, ">": a > b, ">=": a > b}[op]
    extra_left = any(left[len(right) :])
    extra_right = any(right[len(left) :])
    if op == "!=":
        return extra_left or extra_right
    if op in ("=", "<=", ">=") and not extra_left and not extra_right:
        return True
    if op == "=":
        return False
    if op in ("<", "<="):
        return not extra_left and extra_right
    return extra_left and not extra_right


def _numeric(text: str) -> bool:
    return (
        bool(text) and all(c.isdigit() or c == "." for c in text) and any(c.isdigit() for c in text)
    )


def _compare_string(actual: str, op: str, wanted: str) -> bool:
    if op == "=":
        return actual.lower() == wanted.lower()
    if op == "!=":
        return actual.lower() != wanted.lower()
    raise InvalidExpression("invalid expression")


def _major_minor(version: str) -> str:
    match = _SEMVER.match("v" + version.removeprefix("v"))
    if not match:
        raise InvalidExpression(f"failed to get version: invalid CUDA version {version}")
    return f"{match.group(1)}.{match.group(2) or 0}"
