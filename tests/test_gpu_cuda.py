"""The toolkit's NVIDIA_REQUIRE_CUDA rules against the labels of published CUDA images.

Expected verdicts follow nvidia-container-cli (libnvidia-container src/cli/dsl.c and
configure.c) and the toolkit's image reading (nvidia-container-toolkit v1.18.0
internal/config/image/cuda_image.go): clauses ORed by spaces, expressions ANDed by commas.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.gpu.cuda import (
    DriverProperties,
    InvalidExpression,
    check_image,
    cuda_version_text,
    evaluate,
    image_env,
    image_requirements,
    toolkit_brand,
)

LABELS = json.loads((Path(__file__).parent / "data" / "nvidia_require_cuda.json").read_text())
NVML_BRAND_NVIDIA = 14  # what H100/H200/A100 report
NVML_BRAND_GEFORCE = 5


def gpu(driver: str, cuda: int, nvml_brand: int = NVML_BRAND_NVIDIA, arch: str = "9.0"):
    return DriverProperties(driver, cuda_version_text(cuda), toolkit_brand(nvml_brand), arch)


R535 = gpu("535.183.01", 12020)
R550 = gpu("550.54.15", 12040)
R570 = gpu("570.124.06", 12080)


@pytest.mark.parametrize(
    ("image", "driver", "ok", "compat"),
    [
        # image CUDA <= driver CUDA: the first clause holds
        ("cuda-12.2.0-devel-ubuntu22.04", R535, True, False),
        ("cuda-12.4.1-ubuntu22.04", R550, True, False),
        ("cuda-12.8.1-ubuntu22.04", R570, True, False),
        # newer CUDA on a long-term branch the label lists: forward compatibility
        ("cuda-12.4.1-ubuntu22.04", R535, True, True),
        ("cuda-12.8.1-ubuntu22.04", R535, True, True),
        ("cuda-12.8.1-ubuntu22.04", R550, True, True),
        # newer CUDA on a branch the label does not list: refused
        ("cuda-12.8.1-ubuntu22.04", gpu("545.29.06", 12030), False, False),
        ("cuda-12.2.0-devel-ubuntu22.04", gpu("515.105.01", 11070), False, False),
    ],
)
def test_real_cuda_image_labels(image, driver, ok, compat):
    check = check_image(LABELS[image]["env"], [driver])
    assert (check.satisfied, check.forward_compat) == (ok, compat), check.message
    assert check.enforced


def test_refusal_wording_is_the_clis():
    check = check_image(LABELS["cuda-12.8.1-ubuntu22.04"]["env"], [gpu("545.29.06", 12030)])
    assert check.message == (
        "requirement error: unsatisfied condition: cuda>=12.8, please update your driver to a "
        "newer version, or use an earlier cuda container"
    )


def test_forward_compat_on_geforce_is_named():
    check = check_image(LABELS["cuda-12.4.1-ubuntu22.04"]["env"], [gpu("535.183.01", 12020, 5)])
    assert check.satisfied and check.forward_compat
    assert "data-centre" in check.message


def test_brand_is_what_libnvidia_container_calls_it():
    assert toolkit_brand(2) == "Tesla"
    assert toolkit_brand(NVML_BRAND_GEFORCE) == "GeForce"
    assert toolkit_brand(NVML_BRAND_NVIDIA) == "Unknown"  # matches brand=unknown clauses
    assert evaluate("brand=TESLA", DriverProperties("1", "1", "Tesla"))  # case-insensitive


def test_disable_require():
    env = [*LABELS["cuda-12.8.1-ubuntu22.04"]["env"], "NVIDIA_DISABLE_REQUIRE=true"]
    assert check_image(env, [gpu("545.29.06", 12030)]).satisfied
    env[-1] = "NVIDIA_DISABLE_REQUIRE=yes"  # not a Go boolean: the check stays on
    assert not check_image(env, [gpu("545.29.06", 12030)]).satisfied
    assert check_image(env[:-1], [gpu("545.29.06", 12030)], disable_require=True).satisfied


def test_legacy_image_requires_its_cuda_version():
    env = image_env(["CUDA_VERSION=12.6.3", "NVIDIA_REQUIRE_CUDA="])
    assert image_requirements(env) == ("", "cuda>=12.6")
    assert not check_image(env, [R550]).satisfied
    with pytest.raises(InvalidExpression):
        image_requirements({"CUDA_VERSION": "12.x"})


def test_all_require_variables_are_anded_except_jetpack():
    env = {"NVIDIA_REQUIRE_CUDA": "cuda>=12.0", "NVIDIA_REQUIRE_ARCH": "arch>=9.0"}
    assert check_image(env, [R550]).satisfied
    assert not check_image(env, [gpu("550.54.15", 12040, arch="8.0")]).satisfied
    env = {"NVIDIA_REQUIRE_JETPACK_HOST_MOUNTS": "cuda>=99.0"}
    assert image_requirements(env) == ()


def test_invalid_expressions_refuse_like_the_cli():
    for requirement in ("foo>=1", "cuda>=", "cuda>>1", "cuda>=12.x", "brand<tesla"):
        with pytest.raises(InvalidExpression):
            evaluate(requirement, R550)
        check = check_image({"NVIDIA_REQUIRE_CUDA": requirement}, [R550])
        assert check.message == "requirement error: invalid expression"


@pytest.mark.parametrize(
    ("actual", "op", "wanted", "expected"),
    [
        ("12.4", ">=", "12.4.0", True),
        ("12.4", "<", "12.4.1", True),
        ("535.183.01", "<", "536", True),
        ("535.183.01", ">=", "535", True),
        ("536", "<", "536", False),
        ("12.10", ">", "12.9", True),
        ("12.4", "!=", "12.4.0", False),
    ],
)
def test_version_comparison_is_numeric(actual, op, wanted, expected):
    assert evaluate(f"driver{op}{wanted}", DriverProperties(actual, None)) is expected


def test_no_visible_device_skips_brand_and_arch():
    assert check_image({"NVIDIA_REQUIRE_CUDA": "brand=tesla arch=99.0"}, []).satisfied


def test_cdi_modes_do_not_enforce():
    check = check_image(
        LABELS["cuda-12.8.1-ubuntu22.04"]["env"], [gpu("545.29.06", 12030)], mode="jit-cdi"
    )
    assert not check.satisfied and not check.enforced
