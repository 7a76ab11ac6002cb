"""The SuperNode's side of the federation as plan decisions: the node key, the process pair,
the GPU facts in the node config, the instance's names. Pure: no machine."""

from __future__ import annotations

import tomllib

import pytest

from agent import flower, instance
from agent.config import build_config, node_config_pairs, validate_node_config
from agent.engine import create_body
from agent.nodefacts import GpuNodeFacts, from_validation, merged_node_config, node_config_facts
from agent.outcome import Mode
from agent.plan import ActionKind, GpuVerdict, ImageFacts, PlanInputs, make_plan
from agent.watch import spec_from_dict, target_from_record

UUIDS = ("GPU-11111111-1111-1111-1111-111111111111",)
IMAGE = "fl-agent/supernode:1.42.0"
KEY_DIR = "/r/var/lib/fl-agent/node-key"
H200 = GpuNodeFacts(1, "NVIDIA H200", 143771, False, "12.8")


def config(**variables: str):
    result = build_config({"FL_SUPERLINK_ADDRESS": "10.0.0.1:9092", **variables})
    assert result.ok, result.problems
    return result.config


PASSED = GpuVerdict("PASSED", UUIDS, False)


def inputs(verdict: GpuVerdict = PASSED, **kwargs) -> PlanInputs:
    base = {
        "superlink": "10.0.0.1:9092",
        "node_config": "partition-id=0 num-partitions=2",
        "data_dir_host": "/opt/flower/data",
        "image": ImageFacts(IMAGE, True, "49999:49999"),
        "ca_pem": "PEM",
        "ca_host_path": "/x/ca.pem",
        "memory_bytes": 8 * 2**30,
    }
    return PlanInputs(gpu=verdict, **(base | kwargs))


def option(command: tuple[str, ...], name: str) -> str | None:
    for i, arg in enumerate(command):
        if arg == name:
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------- node key


def test_the_subprocess_plan_without_key_or_facts_hashes_as_before() -> None:
    """The hashes main computed for this plan (before the node key, facts and pairs)."""
    plan = make_plan(config(), inputs())
    assert (plan.spec.spec_hash, plan.fallback.spec_hash) == (
        "f27980438686c021",
        "14847bc3d07444a6",
    )
    assert "companion" not in plan.to_dict()


def test_with_auth_the_key_is_made_then_mounted_read_only_and_named_on_the_command_line() -> None:
    plan = make_plan(config(), inputs(node_key_dir=KEY_DIR))
    kinds = [a.kind for a in plan.actions]
    assert kinds.index(ActionKind.NODE_KEY) < kinds.index(ActionKind.CONVERGE)
    assert plan.actions[kinds.index(ActionKind.NODE_KEY)].target == KEY_DIR
    for spec in (plan.spec, plan.fallback):
        assert f"{KEY_DIR}:/app/node-key:ro" in create_body(spec)["HostConfig"]["Binds"]
        assert option(spec.command, "--auth-supernode-private-key") == "/app/node-key/node.key"


@pytest.mark.parametrize("variables", [{"FL_NODE_AUTH": "NO"}, {"FL_TLS_ENABLED": "NO"}])
def test_without_auth_or_tls_no_key(variables: dict[str, str]) -> None:
    plan = make_plan(config(**variables), inputs(node_key_dir=KEY_DIR))
    assert not plan.has(ActionKind.NODE_KEY)
    assert "--auth-supernode-private-key" not in plan.spec.command
    assert all(b.target != "/app/node-key" for b in plan.spec.binds)


# --------------------------------------------------------------------------- process pair


def test_process_isolation_pairs_a_gpu_superexec_with_a_cpu_supernode() -> None:
    plan = make_plan(config(FL_ISOLATION="process"), inputs(node_key_dir=KEY_DIR))
    superexec, supernode = plan.spec, plan.companion
    assert plan.mode == Mode.GPU and superexec.mode == Mode.GPU
    assert superexec.name == "flower-superexec" and superexec.entrypoint == ("flower-superexec",)
    assert superexec.image == supernode.image  # one image: one Flower version for both
    assert superexec.command == tuple(flower.superexec_args(version="1.42.0"))
    assert superexec.gpu_device_ids == UUIDS and superexec.resources is not None
    env = dict(superexec.environment)
    assert env["CUDA_VISIBLE_DEVICES"] == UUIDS[0] and env["FL_GPU_MODE"] == "GPU"
    body = create_body(superexec)
    assert body["Entrypoint"] == ["flower-superexec"]
    assert body["HostConfig"]["NetworkMode"] == "host"
    assert body["HostConfig"]["CapDrop"] == ["ALL"]
    assert all(":/app/node-key:" not in b for b in body["HostConfig"]["Binds"])
    # the SuperNode: no GPUs, --isolation process, the key, GPU facts in its node config
    assert supernode.name == "flower-supernode" and supernode.mode == Mode.CPU
    assert supernode.runtime == "runc" and supernode.gpu_count is None
    assert "DeviceRequests" not in create_body(supernode)["HostConfig"]
    assert option(supernode.command, "--isolation") == "process"
    assert option(supernode.command, "--auth-supernode-private-key")
    # converged together: the SuperNode first
    converge = [a.target for a in plan.actions if a.kind == ActionKind.CONVERGE]
    assert converge == ["flower-supernode", "flower-superexec"]


def test_the_pairs_cpu_fallback_is_a_cpu_superexec_and_a_supernode_saying_cpu() -> None:
    plan = make_plan(config(FL_ISOLATION="process"), inputs(node_facts=H200))
    assert plan.fallback.name == "flower-superexec" and plan.fallback.mode == Mode.CPU
    assert dict(plan.fallback.environment)["NVIDIA_VISIBLE_DEVICES"] == "void"
    gpu = option(plan.companion.command, "--node-config")
    cpu = option(plan.companion_fallback.command, "--node-config")
    assert 'fl-mode="gpu"' in gpu and 'fl-mode="cpu"' in cpu
    assert plan.to_dict()["companion_fallback"]["name"] == "flower-supernode"


def test_a_cpu_pair_has_no_companion_fallback_and_required_gpu_none() -> None:
    plan = make_plan(config(FL_ISOLATION="process"), inputs(GpuVerdict("CPU_ONLY")))
    assert plan.spec.mode == Mode.CPU and plan.companion is not None
    assert plan.companion_fallback is None
    required = make_plan(config(FL_ISOLATION="process", FL_GPU_REQUIRED="YES"), inputs())
    assert required.fallback is None and required.companion_fallback is None


def test_a_superexec_left_over_is_removed_when_isolation_is_subprocess() -> None:
    plan = make_plan(config(), inputs(leftover_superexec=True))
    removal = [a.target for a in plan.actions if a.kind == ActionKind.REMOVE_CONTAINER]
    assert removal == ["flower-superexec"]
    kept = make_plan(config(FL_ISOLATION="process"), inputs(leftover_superexec=True))
    assert not kept.has(ActionKind.REMOVE_CONTAINER)


def test_a_superlink_left_by_a_role_change_is_removed_before_the_supernode_starts() -> None:
    plan = make_plan(config(), inputs(other_role=("flower-superlink",)))
    kinds = [(a.kind, a.target) for a in plan.actions]
    removal = kinds.index((ActionKind.REMOVE_CONTAINER, "flower-superlink"))
    assert removal < kinds.index((ActionKind.CONVERGE, plan.spec.name))


def test_the_watch_checks_the_superexec_and_reads_the_supernodes_log() -> None:
    plan = make_plan(config(FL_ISOLATION="process"), inputs()).to_dict()
    record = {
        "plan": plan,
        "container": {"container_id": "c1", "mode": "GPU", "spec_hash": plan["spec"]["spec_hash"]},
        "companion": {"container_id": "c2", "spec_hash": plan["companion"]["spec_hash"]},
    }
    target = target_from_record(record)
    assert (target.name, target.log_name, target.expected) == (
        "flower-superexec",
        "flower-supernode",
        UUIDS,
    )
    assert spec_from_dict(plan["spec"]).entrypoint == ("flower-superexec",)


# --------------------------------------------------------------------------- instance


def test_an_instance_renames_both_containers_and_moves_the_local_port() -> None:
    third = instance.parse("3")
    plan = make_plan(config(FL_ISOLATION="process"), inputs(instance=third))
    assert (plan.companion.name, plan.spec.name) == ("flower-supernode-3", "flower-superexec-3")
    address = f"127.0.0.1:{instance.INSTANCE_PORT_BASE + 3}"
    assert option(plan.companion.command, "--port") == str(instance.INSTANCE_PORT_BASE + 3)
    assert option(plan.spec.command, "--runtime-api-address") == address
    old = build_config({"FL_SUPERLINK_ADDRESS": "h:9092", "FLOWER_VERSION": "1.25.0"}).config
    older = make_plan(old, inputs(instance=third)).spec
    assert option(older.command, "--clientappio-api-address") == address


@pytest.mark.parametrize("text", ["0", "100", "-1", "1.5", "٣", " 7x", "1e2", "007"])
def test_an_instance_is_1_to_99_in_ascii_digits(text: str) -> None:
    with pytest.raises(ValueError):
        instance.parse(text)


def test_no_instance_is_the_appliances() -> None:
    for text in (None, "", "  "):
        one = instance.parse(text)
        assert (one.supernode, one.superexec) == ("flower-supernode", "flower-superexec")
        assert one.local_api_address == "127.0.0.1:9094"


# --------------------------------------------------------------------------- node facts


def validation(selected=None, mig=False) -> dict:
    mig_devices = [
        {"uuid": "MIG-" + "a" * 8 + "-aaaa-aaaa-aaaa-" + "a" * 12, "memory_total": 10 << 30}
    ]
    gpu = {
        "uuid": UUIDS[0],
        "name": "NVIDIA H200",
        "memory_total": 143771 << 20,
        "mig_devices": mig_devices if mig else [],
    }
    other = {"uuid": "GPU-2" + "2" * 7 + "-2222-2222-2222-" + "2" * 12, "name": "NVIDIA L4"}
    nvml = {"gpus": [gpu, other | {"memory_total": 23034 << 20}], "cuda_version": "12.8"}
    return {"facts": {"nvml": nvml}, "selected": selected}


def test_facts_are_of_the_selected_gpus() -> None:
    assert from_validation(validation([UUIDS[0]])) == H200
    every = from_validation(validation())
    assert every.count == 2 and every.memory_mib == 23034
    mig = from_validation(
        validation(
            [validation(mig=True)["facts"]["nvml"]["gpus"][0]["mig_devices"][0]["uuid"]], mig=True
        )
    )
    assert mig.mig and mig.count == 1 and mig.memory_mib == 10240
    for nothing in (None, {}, {"facts": None}, {"facts": {"nvml": {"gpus": "x"}}}):
        assert from_validation(nothing) == GpuNodeFacts()


@pytest.mark.parametrize(
    "change",
    [
        lambda v: v.update(facts="x"),
        lambda v: v.update(selected={"a": 1}),
        lambda v: v.update(selected=[["unhashable"]]),
        lambda v: v["facts"]["nvml"]["gpus"][0].update(mig_devices=["x", 3]),
        lambda v: v["facts"]["nvml"]["gpus"][0].update(name={"not": "text"}),
        lambda v: v["facts"]["nvml"].update(cuda_version=12.8),
    ],
)
def test_a_recorded_validation_of_another_shape_gives_facts_not_a_traceback(change) -> None:
    """A periodic run reads the validation back from the state file (an older version or a hand
    edit may have left another shape there)."""
    recorded = validation([UUIDS[0]])
    change(recorded)
    facts = from_validation(recorded)
    assert "fl-mode" in node_config_facts(facts, gpu=True)


MIG_A, MIG_B, MIG_C = (f"MIG-{c * 8}-{c * 4}-{c * 4}-{c * 4}-{c * 12}" for c in "abc")


def mig_validation(*profiles: object, selected: tuple[str, ...] | None = None) -> dict:
    """One H200 whose MIG devices (MIG_A, MIG_B, ...) have these profiles (absent: ...)."""
    report = validation(mig=True)
    gpu = report["facts"]["nvml"]["gpus"][0]
    uuids = (MIG_A, MIG_B, MIG_C)[: len(profiles)]
    gpu["mig_devices"] = [
        {"uuid": u, "memory_total": 16 << 30} | ({} if p is ... else {"profile": p})
        for u, p in zip(uuids, profiles, strict=True)
    ]
    return report | {"selected": list(selected if selected is not None else uuids)}


def test_mig_profile_of_the_selected_mig_devices() -> None:
    assert from_validation(mig_validation("1g.18gb")).mig_profile == "1g.18gb"
    mixed = mig_validation("1g.18gb", "1c.2g.35gb", "1g.18gb")
    assert from_validation(mixed).mig_profile == "1g.18gb 1c.2g.35gb"  # distinct, in order
    only_b = mig_validation("1g.18gb", "3g.71gb", selected=(MIG_B,))
    assert from_validation(only_b).mig_profile == "3g.71gb"
    assert from_validation(validation([UUIDS[0]])).mig_profile is None  # a whole GPU


@pytest.mark.parametrize(
    "profiles", [(...,), (None,), ("",), (42,), (["1g.18gb"],), ({"x": 1},), (..., None)]
)
def test_mig_devices_without_a_readable_profile_give_none(profiles: tuple) -> None:
    facts = from_validation(mig_validation(*profiles))
    assert facts.mig and facts.mig_profile is None
    assert "fl-mig-profile" not in node_config_facts(facts, True)


def test_a_missing_profile_leaves_the_others() -> None:
    assert from_validation(mig_validation(..., "2g.35gb", None)).mig_profile == "2g.35gb"


def test_mig_profile_is_a_toml_string_in_gpu_mode_only() -> None:
    facts = from_validation(mig_validation("1g.18gb", "1c.2g.35gb"))
    merged = merged_node_config("partition-id=0", node_config_facts(facts, True))
    assert validate_node_config(merged) is None
    parsed = tomllib.loads("\n".join(f"{k} = {v}" for k, v in node_config_pairs(merged)))
    assert parsed["fl-mig-profile"] == "1g.18gb 1c.2g.35gb" and parsed["fl-mig"] is True
    assert "fl-mig-profile" not in node_config_facts(facts, False)


@pytest.mark.parametrize("profile", ['1g.5gb" --evil="x', "a\\b\n", "9g." * 100])
def test_a_strange_mig_profile_stays_one_toml_string(profile: str) -> None:
    facts = from_validation(mig_validation(profile))
    values = dict(node_config_pairs(merged_node_config(None, node_config_facts(facts, True))))
    text = tomllib.loads(f"v = {values['fl-mig-profile']}")["v"]
    assert len(text) <= 64 and '"' not in text and "\\" not in text and "\n" not in text


def test_gpu_and_cpu_facts_read_as_toml_and_as_flowers_pairs() -> None:
    gpu = merged_node_config(None, node_config_facts(H200, True))
    assert validate_node_config(gpu) is None
    parsed = tomllib.loads("\n".join(f"{k} = {v}" for k, v in node_config_pairs(gpu)))
    assert parsed == {
        "fl-mode": "gpu",
        "fl-gpu-count": 1,
        "fl-gpu-model": "NVIDIA H200",
        "fl-gpu-memory-mib": 143771,
        "fl-mig": False,
        "fl-cuda-version": "12.8",
    }
    assert (
        merged_node_config(None, node_config_facts(H200, False)) == 'fl-mode="cpu" fl-gpu-count=0'
    )


def test_the_operators_keys_win_and_the_partition_stays() -> None:
    facts = node_config_facts(H200, True)
    merged = merged_node_config('partition-id=1 fl-mode="custom" fl-gpu-count=9', facts)
    keys = [k for k, _ in node_config_pairs(merged)]
    assert merged.startswith('partition-id=1 fl-mode="custom" fl-gpu-count=9 ')
    assert keys.count("fl-mode") == 1 and keys.count("fl-gpu-count") == 1
    assert "fl-gpu-model" in keys


@pytest.mark.parametrize(
    "name", ['A" --evil="x', "a\\b", "line\nbreak", "x" * 500, "'single'", "tab\there", "ü"]
)
def test_a_strange_gpu_name_stays_one_toml_string(name: str) -> None:
    merged = merged_node_config("partition-id=0", node_config_facts(GpuNodeFacts(1, name), True))
    assert validate_node_config(merged) is None
    values = dict(node_config_pairs(merged))
    model = tomllib.loads(f"v = {values['fl-gpu-model']}")["v"]
    assert len(model) <= 64 and '"' not in model and "\\" not in model and "\n" not in model


def test_a_merge_over_the_length_limit_keeps_the_operators_config() -> None:
    long = "k=" + '"' + "x" * 4080 + '"'
    assert merged_node_config(long, node_config_facts(H200, True)) == long


def test_node_facts_off_leaves_the_node_config_as_discovered() -> None:
    plan = make_plan(config(FL_NODE_FACTS="NO"), inputs(node_facts=None))
    assert option(plan.spec.command, "--node-config") == "partition-id=0 num-partitions=2"
    on = make_plan(config(), inputs(node_facts=H200))
    assert 'fl-mode="gpu"' in option(on.spec.command, "--node-config")
    assert 'fl-mode="cpu"' in option(on.fallback.command, "--node-config")
    assert option(on.spec.command, "--node-config").startswith("partition-id=0 num-partitions=2 ")


def test_a_pair_whose_superexec_never_started_is_watched_through_its_supernode() -> None:
    plan = make_plan(config(FL_ISOLATION="process"), inputs()).to_dict()
    record = {
        "plan": plan,
        "container": None,
        "companion": {"container_id": "c2", "spec_hash": plan["companion"]["spec_hash"]},
    }
    target = target_from_record(record)
    assert (target.name, target.container_id, target.mode) == ("flower-supernode", "c2", "NONE")
    assert target_from_record({"plan": plan}) is None


def test_status_names_the_fix_of_a_refused_key() -> None:
    from agent.cli import _status_text

    watch = {"updated_at": "t", "attributes": {"FL_SUPERNODE_STATUS": "AUTH_REJECTED"}}
    text = _status_text({"last_boot": None, "watch": watch | {"problems": []}})
    assert "FL_SUPERNODE_STATUS=AUTH_REJECTED" in text and "flwr supernode register" in text
    connected = {"updated_at": "t", "attributes": {"FL_SUPERNODE_STATUS": "CONNECTED"}}
    assert "fix:" not in _status_text({"last_boot": None, "watch": connected | {"problems": []}})
