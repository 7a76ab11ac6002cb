"""Every FL_* variable: good values, bad values, aliases, empty strings."""

from __future__ import annotations

import base64

import pytest

from agent import flower
from agent.config import DeviceSelector, build_config, parse_host_port
from agent.context import Secret, read_platform

UUID = "GPU-0b4d3e8a-1c2f-4a5b-9c8d-7e6f5a4b3c2d"
MIG = "MIG-5c6d7e8f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def ok(variables: dict[str, str]):
    result = build_config(variables)
    assert result.ok, result.problems
    return result.config


def bad(variables: dict[str, str]) -> list:
    result = build_config(variables)
    assert result.config is None
    return list(result.problems)


def test_defaults() -> None:
    config = ok({})
    assert config.gpu_enabled == "AUTO" and not config.gpu_required
    assert config.cuda_visible_devices is None
    assert config.tls_enabled and config.toolkit_install == "AUTO"
    assert config.isolation == "subprocess" and config.log_level == "INFO"
    assert config.max_retries == 0 and config.max_wait_time == 0
    assert config.data_dir == "/opt/flower/data"
    assert config.flower_version == flower.DEFAULT_FLOWER_VERSION
    assert config.supernode_image == flower.default_image(flower.DEFAULT_FLOWER_VERSION)
    assert config.superlink_address is None and config.node_config is None


@pytest.mark.parametrize(
    ("name", "value", "attr", "expected"),
    [
        ("FL_GPU_ENABLED", "yes", "gpu_enabled", "YES"),
        ("FL_GPU_ENABLED", "No", "gpu_enabled", "NO"),
        ("FL_GPU_ENABLED", "auto", "gpu_enabled", "AUTO"),
        ("FL_GPU_REQUIRED", "YES", "gpu_required", True),
        ("FL_CUDA_VISIBLE_DEVICES", "all", "cuda_visible_devices", None),
        (
            "FL_CUDA_VISIBLE_DEVICES",
            "0,1",
            "cuda_visible_devices",
            (DeviceSelector("index", "0"), DeviceSelector("index", "1")),
        ),
        (
            "FL_CUDA_VISIBLE_DEVICES",
            f"{UUID}, {MIG}",
            "cuda_visible_devices",
            (DeviceSelector("gpu_uuid", UUID), DeviceSelector("mig_uuid", MIG)),
        ),
        (
            "FL_CUDA_VISIBLE_DEVICES",
            f"MIG-{UUID}/1/0",
            "cuda_visible_devices",
            (DeviceSelector("mig_uuid", f"MIG-{UUID}/1/0"),),
        ),
        ("FL_GPU_MEMORY_FRACTION", "0.5", "gpu_memory_fraction", 0.5),
        ("FL_GPU_MEMORY_FRACTION", "1", "gpu_memory_fraction", 1.0),
        ("FL_SUPERLINK_ADDRESS", "10.0.0.5:9092", "superlink_address", "10.0.0.5:9092"),
        ("FL_SUPERLINK_ADDRESS", "[fd00::1]:8000", "superlink_address", "[fd00::1]:8000"),
        (
            "FL_SUPERLINK_ADDRESS",
            "superlink.example.org:443",
            "superlink_address",
            "superlink.example.org:443",
        ),
        (
            "FL_NODE_CONFIG",
            'partition-id=0 num-partitions=2 path="/a b" use-gpu=true',
            "node_config",
            'partition-id=0 num-partitions=2 path="/a b" use-gpu=true',
        ),
        ("FLOWER_VERSION", "1.25.0", "flower_version", "1.25.0"),
        (
            "FL_SUPERNODE_IMAGE",
            "registry.local:5000/fl/supernode:1.42.0-gpu",
            "supernode_image",
            "registry.local:5000/fl/supernode:1.42.0-gpu",
        ),
        ("FL_ISOLATION", "process", "isolation", "process"),
        ("FL_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("FL_MAX_RETRIES", "5", "max_retries", 5),
        ("FL_MAX_WAIT_TIME", "0", "max_wait_time", 0),
        ("FL_TLS_ENABLED", "no", "tls_enabled", False),
        ("FL_SSL_CA_CERT", base64.b64encode(PEM.encode()).decode(), "ssl_ca_cert", PEM),
        ("FL_TOOLKIT_INSTALL", "never", "toolkit_install", "NEVER"),
        ("FL_DATA_DIR", "/srv/data/", "data_dir", "/srv/data"),
    ],
)
def test_good_values(name: str, value: str, attr: str, expected) -> None:
    assert getattr(ok({name: value}), attr) == expected
    # the one-apps alias gives the same result
    assert getattr(ok({f"ONEAPP_{name}": value}), attr) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FL_GPU_ENABLED", "maybe"),
        ("FL_GPU_ENABLED", "1"),
        ("FL_GPU_REQUIRED", "true"),
        ("FL_CUDA_VISIBLE_DEVICES", "0,0"),
        ("FL_CUDA_VISIBLE_DEVICES", "gpu0"),
        ("FL_CUDA_VISIBLE_DEVICES", "0,,1"),
        ("FL_CUDA_VISIBLE_DEVICES", "GPU-123"),
        ("FL_GPU_MEMORY_FRACTION", "0"),
        ("FL_GPU_MEMORY_FRACTION", "1.5"),
        ("FL_GPU_MEMORY_FRACTION", "nan"),
        ("FL_GPU_MEMORY_FRACTION", "half"),
        ("FL_SUPERLINK_ADDRESS", "10.0.0.5"),
        ("FL_SUPERLINK_ADDRESS", "10.0.0.5:0"),
        ("FL_SUPERLINK_ADDRESS", "10.0.0.5:70000"),
        ("FL_SUPERLINK_ADDRESS", "999.1.1.1:9092"),
        ("FL_SUPERLINK_ADDRESS", "fd00::1:8000"),
        ("FL_SUPERLINK_ADDRESS", "host;rm -rf /:9092"),
        ("FL_SUPERLINK_ADDRESS", "http://x:9092"),
        ("FL_NODE_CONFIG", "data-path=/data/site1"),
        ("FL_NODE_CONFIG", "partition-id=0,num-partitions=2"),
        ("FL_NODE_CONFIG", "use-gpu=True"),
        ("FL_NODE_CONFIG", "justtext"),
        ("FLOWER_VERSION", "1.24.0"),
        ("FLOWER_VERSION", "1.43.0"),
        ("FLOWER_VERSION", "latest"),
        ("FLOWER_VERSION", "1.42"),
        ("FL_SUPERNODE_IMAGE", "Bad Image"),
        ("FL_SUPERNODE_IMAGE", "img:tag;reboot"),
        ("FL_ISOLATION", "thread"),
        ("FL_LOG_LEVEL", "TRACE"),
        ("FL_MAX_RETRIES", "-1"),
        ("FL_MAX_WAIT_TIME", "1.5"),
        ("FL_TLS_ENABLED", "on"),
        ("FL_SSL_CA_CERT", "not base64!"),
        ("FL_SSL_CA_CERT", base64.b64encode(b"hello").decode()),
        ("FL_TOOLKIT_INSTALL", "ALWAYS"),
        ("FL_DATA_DIR", "relative/path"),
        ("FL_DATA_DIR", "/opt/../etc"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    problems = bad({name: value})
    assert [p.subject for p in problems] == [name]
    assert problems[0].fix.startswith("accepted:")
    problems = bad({f"ONEAPP_{name}": value})
    assert [p.subject for p in problems] == [f"ONEAPP_{name}"]


def test_all_errors_collected_not_only_the_first() -> None:
    problems = bad(
        {
            "FL_GPU_ENABLED": "maybe",
            "FL_SUPERLINK_ADDRESS": "nope",
            "FL_LOG_LEVEL": "LOUD",
            "FLOWER_VERSION": "2.0.0",
            "FL_MAX_RETRIES": "x",
        }
    )
    assert {p.subject for p in problems} == {
        "FL_GPU_ENABLED",
        "FL_SUPERLINK_ADDRESS",
        "FL_LOG_LEVEL",
        "FLOWER_VERSION",
        "FL_MAX_RETRIES",
    }


def test_empty_string_means_unset() -> None:
    config = ok(
        {
            name: ""
            for name in (
                "FL_GPU_ENABLED",
                "FL_SUPERLINK_ADDRESS",
                "FL_NODE_CONFIG",
                "FLOWER_VERSION",
                "FL_MAX_RETRIES",
                "FL_TLS_ENABLED",
                "FL_DATA_DIR",
                "FL_CUDA_VISIBLE_DEVICES",
            )
        }
    )
    assert config == ok({})


def test_own_name_wins_over_oneapp_alias() -> None:
    result = build_config({"FL_LOG_LEVEL": "ERROR", "ONEAPP_FL_LOG_LEVEL": "DEBUG"})
    assert result.config.log_level == "ERROR"
    assert result.sources["FL_LOG_LEVEL"] == "FL_LOG_LEVEL"


def test_empty_own_name_falls_back_to_alias() -> None:
    result = build_config({"FL_LOG_LEVEL": "", "ONEAPP_FL_LOG_LEVEL": "DEBUG"})
    assert result.config.log_level == "DEBUG"
    assert result.sources["FL_LOG_LEVEL"] == "ONEAPP_FL_LOG_LEVEL"


def test_flower_version_alias_and_derived_image() -> None:
    config = ok({"ONEAPP_FLOWER_VERSION": "1.25.0"})
    assert config.flower_version == "1.25.0"
    assert config.supernode_image == flower.default_image("1.25.0")


def test_baked_version_is_the_default() -> None:
    assert build_config({}, baked_flower_version="1.30.1").config.flower_version == "1.30.1"


def test_required_with_gpu_disabled_conflicts() -> None:
    problems = bad({"FL_GPU_ENABLED": "NO", "FL_GPU_REQUIRED": "YES"})
    assert problems[0].name == "conflicting_values"


def test_secret_masked_everywhere() -> None:
    token = Secret("s3cr3t-token")
    variables = {"ONEGATE_ENDPOINT": "http://169.254.16.9:5030", "VMID": "42"}
    platform = read_platform(variables, token)
    assert platform.token == token and platform.vmid == "42"
    assert "s3cr3t" not in repr(platform) + str(platform)
    assert "token" not in build_config(variables).config.to_dict()  # FL config only


def test_platform_is_read_even_when_the_fl_config_is_invalid() -> None:
    variables = {
        "ONEGATE_ENDPOINT": "http://169.254.16.9:5030/",
        "VMID": "42",
        "REPORT_READY": "yes",
        "FL_GPU_ENABLED": "perhaps",
    }
    assert build_config(variables).config is None
    platform = read_platform(variables, Secret("t"))
    assert platform.onegate_endpoint == "http://169.254.16.9:5030" and platform.vmid == "42"
    assert platform.report_ready and not platform.problems


@pytest.mark.parametrize(("name", "value"), [("ONEGATE_ENDPOINT", "ftp://x"), ("VMID", "4x")])
def test_invalid_platform_values_are_left_out_and_named(name: str, value: str) -> None:
    platform = read_platform({"ONEGATE_ENDPOINT": "http://h:5030", "VMID": "1", name: value}, None)
    assert getattr(platform, "onegate_endpoint" if name == "ONEGATE_ENDPOINT" else "vmid") is None
    assert [p.subject for p in platform.problems] == [name]


def test_bad_value_messages_are_truncated() -> None:
    problem = bad({"FL_LOG_LEVEL": "x" * 500})[0]
    assert len(problem.message) < 120


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.b:1", ("a.b", 1)),
        ("1.2.3.4:5", ("1.2.3.4", 5)),
        ("[::1]:80", ("::1", 80)),
        ("-bad.host:1", None),
        ("a..b:1", None),
        ("[zz::1]:1", None),
    ],
)
def test_host_port(text: str, expected) -> None:
    assert parse_host_port(text) == expected
