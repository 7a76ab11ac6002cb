"""Discovery through the OneGate emulator: address, CA, partition id."""

from __future__ import annotations

import base64
import random
import stat
from datetime import UTC, datetime

import pytest

from agent.config import Config
from agent.context import Platform, Secret
from agent.discovery import CA_PATH, discover, write_ca
from agent.onegate import Reporter, RetryPolicy, queue_dir
from agent.paths import Root
from agent.tls import check_ca
from emulators.onegate import VERSIONS, OneGateEmulator

# Self-signed test CAs (openssl ca -selfsign): valid 2020-2120, and expired in 2001.
CA = """-----BEGIN CERTIFICATE-----
MIIBWTCB/6ADAgECAgEBMAoGCCqGSM49BAMCMBsxGTAXBgNVBAMMEGZsLWFnZW50
IHRlc3QgQ0EwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMBsxGTAX
BgNVBAMMEGZsLWFnZW50IHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAR2LvWMNM0SwVPhekFVvfb8AuzMWYmY0bRm+N9Fzd9LLeHinYRMYqHQiBWRY20u
sMB7CMf9EJ7bbhpwkJPJiBZfozIwMDAPBgNVHRMBAf8EBTADAQH/MB0GA1UdDgQW
BBQq/w2LwOWgPhnrAwQngkGJi75KSzAKBggqhkjOPQQDAgNJADBGAiEAjsXcR30B
idx1K1KzvJO7p9KMcAdMm73zgrmEvUnDV4ACIQCxiW1ves4ovHUsT35DJXhkxhwN
wRTGd3MBKifCtlzKIQ==
-----END CERTIFICATE-----
"""
EXPIRED_CA = """-----BEGIN CERTIFICATE-----
MIIBVjCB/aADAgECAgECMAoGCCqGSM49BAMCMBsxGTAXBgNVBAMMEGZsLWFnZW50
IHRlc3QgQ0EwHhcNMDAwMTAxMDAwMDAwWhcNMDEwMTAxMDAwMDAwWjAbMRkwFwYD
VQQDDBBmbC1hZ2VudCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
di71jDTNEsFT4XpBVb32/ALszFmJmNG0ZvjfRc3fSy3h4p2ETGKh0IgVkWNtLrDA
ewjH/RCe224acJCTyYgWX6MyMDAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQU
Kv8Ni8DloD4Z6wMEJ4JBiYu+SkswCgYIKoZIzj0EAwIDSAAwRQIgH8u+kIR+zVoD
wtElIUI7yyEB9fEPdOkGREmLAWHvYxMCIQCofATmaOwDnCQoPpj+vh+Lrbv1Dqkk
MdWZA3F6LG/irg==
-----END CERTIFICATE-----
"""
SUPERLINK, ME = 41, 51


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(params=VERSIONS)
def emulator(request):
    with OneGateEmulator(version=request.param) as em:
        em.add_vm(SUPERLINK, ips=("10.0.0.41",))
        for vm_id in (52, ME, 50):
            em.add_vm(vm_id, ips=(f"10.0.1.{vm_id}",))
        em.add_service(7, "flower", {"superlink": [SUPERLINK], "supernode": [52, ME, 50]})
        yield em


def setup(em, tmp_path, vmid=ME, timeout=1.0, **changes):
    config = Config(**changes)
    platform = Platform(em.endpoint, str(vmid), Secret(em.vms[vmid].token))
    reporter = Reporter(
        endpoint=platform.onegate_endpoint,
        vmid=platform.vmid,
        token=platform.token,
        queue_dir=queue_dir(Root(tmp_path)),
        total_timeout_s=timeout,
        policy=RetryPolicy(base_s=0.01, cap_s=0.05, connect_timeout_s=0.3, read_timeout_s=0.3),
        rng=random.Random(3),
    )
    return config, reporter


class Clock:
    """An injected sleep that runs scheduled changes: 'the SuperLink publishes on try N'."""

    def __init__(self, **at):
        self.calls = 0
        self.at = at

    def __call__(self, seconds: float) -> None:
        self.calls += 1
        action = self.at.get(f"t{self.calls}")
        if action:
            action()


def gets(em, path):
    return [r for r in em.requests if r.method == "GET" and r.path == path]


# --------------------------------------------------------------------------- address


def test_configured_values_need_no_onegate(emulator, tmp_path):
    config, reporter = setup(
        emulator,
        tmp_path,
        superlink_address="10.9.9.9:9092",
        node_config="partition-id=0",
        tls_enabled=False,
    )
    found = discover(config, reporter, attempts=2, interval_s=0, sleep=Clock())
    assert found.ok and found.superlink_address == "10.9.9.9:9092"
    assert found.sources == {
        "superlink_address": "FL_SUPERLINK_ADDRESS",
        "node_config": "FL_NODE_CONFIG",
    }
    assert emulator.requests == []


def test_superlink_publishing_late_is_waited_for(emulator, tmp_path):
    config, reporter = setup(emulator, tmp_path, tls_enabled=False)
    emulator.remove_node(7, "superlink", SUPERLINK)
    clock = Clock(
        t1=lambda: emulator.add_node(7, "superlink", SUPERLINK),
        t3=lambda: emulator.set_attributes(SUPERLINK, FL_ENDPOINT="superlink.example:9092"),
    )
    found = discover(config, reporter, attempts=10, interval_s=0.1, sleep=clock)
    assert found.ok, found.problems
    assert found.superlink_address == "superlink.example:9092"
    assert found.sources["superlink_address"] == f"FL_ENDPOINT of SuperLink VM {SUPERLINK}"
    assert clock.calls == 3
    assert len(gets(emulator, "/service")) == 4
    assert len(gets(emulator, f"/vms/{SUPERLINK}")) == 3


def test_ready_superlink_without_endpoint_gives_its_nic_and_the_fleet_port(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_READY="YES")
    for version, port in (("1.42.0", 8000), ("1.30.0", 9092)):
        config, reporter = setup(emulator, tmp_path, tls_enabled=False, flower_version=version)
        found = discover(config, reporter, attempts=5, interval_s=0, sleep=Clock())
        assert found.superlink_address == f"10.0.0.41:{port}"
        assert "fleet port" in found.notes[0]


def test_nic_fallback_after_the_tries_run_out(emulator, tmp_path):
    config, reporter = setup(emulator, tmp_path, tls_enabled=False, node_config="x=1")
    clock = Clock()
    found = discover(config, reporter, attempts=3, interval_s=0, sleep=clock)
    assert found.ok and found.superlink_address == "10.0.0.41:8000"
    assert clock.calls == 2
    assert "published no FL_ENDPOINT in 3 tries" in found.notes[0]


def test_empty_superlink_role_is_not_found(emulator, tmp_path):
    emulator.remove_node(7, "superlink", SUPERLINK)
    config, reporter = setup(emulator, tmp_path, tls_enabled=False)
    found = discover(config, reporter, attempts=3, interval_s=0, sleep=Clock())
    assert [p.name for p in found.problems] == ["superlink_not_found"]
    assert "has no VM yet" in found.problems[0].message
    assert found.superlink_address is None


def test_onegate_down_throughout_is_unreachable(emulator, tmp_path):
    config, reporter = setup(emulator, tmp_path, timeout=0.1, tls_enabled=False)
    emulator.set_faults(fail_for_s=60)
    found = discover(config, reporter, attempts=2, interval_s=0, sleep=Clock())
    assert [p.name for p in found.problems] == ["superlink_unreachable"]


def test_oneflow_down_is_waited_for(emulator, tmp_path):
    config, reporter = setup(emulator, tmp_path, tls_enabled=False)
    service = emulator.services.pop(7)  # OneGate answers 404 Service 7 not found
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092")
    clock = Clock(t2=lambda: emulator.services.update({7: service}))
    found = discover(config, reporter, attempts=5, interval_s=0, sleep=clock)
    assert found.ok and found.superlink_address == "10.0.0.41:9092"
    assert [r.status for r in gets(emulator, "/service")] == [404, 404, 200]


@pytest.mark.parametrize(
    ("change", "problem", "words"),
    [
        (lambda em: em.set_faults(unauthorized=True), "onegate_unauthorized", "token or VMID"),
        (lambda em: setattr(em.services[7], "roles", None), "superlink_not_found", "is empty"),
        (lambda em: em.vms[ME].user_template.pop("SERVICE_ID"), "superlink_not_found",
         "SERVICE_ID"),
        (lambda em: setattr(em.services[7].roles[0], "name", "server"), "superlink_not_found",
         "no 'superlink' role"),
        (lambda em: em.set_attributes(SUPERLINK, FL_ENDPOINT="not an address"),
         "superlink_not_found", "not host:port"),
    ],
)  # fmt: skip
def test_hopeless_lookups_stop_at_once(emulator, tmp_path, change, problem, words):
    config, reporter = setup(emulator, tmp_path, tls_enabled=False)
    change(emulator)
    clock = Clock()
    found = discover(config, reporter, attempts=5, interval_s=0, sleep=clock)
    assert found.problems[0].name == problem
    assert words in found.problems[0].message
    assert clock.calls == 0


def test_no_onegate_and_no_address(tmp_path):
    config = Config(tls_enabled=False)
    reporter = Reporter.from_platform(Platform(), Root(tmp_path))
    found = discover(config, reporter, attempts=3, interval_s=0, sleep=Clock())
    assert [p.name for p in found.problems] == ["superlink_not_found"]
    assert "OneGate is off" in found.problems[0].message
    assert found.to_dict()["problems"][0]["name"] == "superlink_not_found"


# --------------------------------------------------------------------------- TLS trust


def test_ca_published_late_is_fetched_and_written(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_TLS="YES")
    config, reporter = setup(emulator, tmp_path)
    clock = Clock(t2=lambda: emulator.set_attributes(SUPERLINK, FL_CA_CERT=b64(CA)))
    found = discover(config, reporter, attempts=3, interval_s=0, ca_interval_s=0, sleep=clock)
    assert found.ok, found.problems
    assert found.ca_pem == CA
    assert found.sources["ca_pem"] == f"FL_CA_CERT of SuperLink VM {SUPERLINK}"
    assert clock.calls == 2
    assert found.to_dict()["ca_pem"] == f"<PEM, {len(CA)} bytes>"
    path = write_ca(found.ca_pem, Root(tmp_path))
    assert path == tmp_path / CA_PATH.lstrip("/")
    assert path.read_text() == CA
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755


def test_ca_under_its_base64_name(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_CA_CERT_BASE64=b64(CA))
    config, reporter = setup(emulator, tmp_path)
    found = discover(config, reporter, attempts=1, interval_s=0, sleep=Clock())
    assert found.ok and found.ca_pem == CA


@pytest.mark.parametrize(
    ("published", "words"),
    [
        (b64("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "not an X.509"),
        (b64(CA.replace("MIIBWTCB", "MIIBWTCC")), "not an X.509"),
        (b64(CA[:200] + "\n-----END CERTIFICATE-----\n"), "not an X.509"),
        (b64("hello"), "no -----BEGIN CERTIFICATE-----"),
        ("%%%not base64%%%", "not base64"),
        (b64(EXPIRED_CA), "expired on 2001-01-01"),
    ],
)
def test_corrupt_or_expired_ca_is_a_tls_error(emulator, tmp_path, published, words):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_CA_CERT=published)
    config, reporter = setup(emulator, tmp_path)
    found = discover(config, reporter, attempts=1, interval_s=0, sleep=Clock())
    assert [p.name for p in found.problems] == ["tls_error"]
    assert words in found.problems[0].message
    assert found.ca_pem is None


def test_configured_ca_wins_and_is_checked(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_CA_CERT="garbage")
    config, reporter = setup(emulator, tmp_path, ssl_ca_cert=CA, node_config="x=1")
    found = discover(config, reporter, attempts=1, interval_s=0, sleep=Clock())
    assert found.ok and found.sources["ca_pem"] == "FL_SSL_CA_CERT"
    config, reporter = setup(emulator, tmp_path, ssl_ca_cert=EXPIRED_CA, node_config="x=1")
    found = discover(config, reporter, attempts=1, interval_s=0, sleep=Clock())
    assert found.problems[0].name == "tls_error" and found.problems[0].subject == "FL_SSL_CA_CERT"


def test_tls_here_but_not_on_the_superlink(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_TLS="NO")
    config, reporter = setup(emulator, tmp_path)
    found = discover(config, reporter, attempts=1, interval_s=0, sleep=Clock())
    assert found.problems[0].name == "tls_error" and "FL_TLS=NO" in found.problems[0].message


def test_tls_superlink_that_never_publishes_its_ca(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_TLS="YES")
    config, reporter = setup(emulator, tmp_path)
    clock = Clock()
    found = discover(config, reporter, attempts=1, ca_attempts=3, ca_interval_s=0, sleep=clock)
    assert found.problems[0].name == "tls_error" and clock.calls == 2


def test_ready_superlink_without_ca_leaves_the_system_trust(emulator, tmp_path):
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="superlink.example.org:443", FL_READY="YES")
    config, reporter = setup(emulator, tmp_path)
    clock = Clock()
    found = discover(config, reporter, attempts=1, ca_attempts=5, sleep=clock)
    assert found.ok and found.ca_pem is None and clock.calls == 0
    assert "system's CAs" in found.notes[-1]


def test_check_ca_dates():
    assert check_ca(CA)[0] == CA
    assert "valid only from 2020" in check_ca(CA, now=datetime(2019, 1, 1, tzinfo=UTC))[1]
    assert "expired on 2120" in check_ca(CA, now=datetime(2121, 1, 1, tzinfo=UTC))[1]
    bundle = "junk before\n" + CA + CA
    assert check_ca(bundle)[0] == CA + CA


# --------------------------------------------------------------------------- partition id


def test_partition_is_the_position_by_vm_id_and_stable_when_scaling(emulator, tmp_path):
    def partition(vmid):
        config, reporter = setup(emulator, tmp_path, vmid=vmid, superlink_address="h:1",
                                 tls_enabled=False)  # fmt: skip
        found = discover(config, reporter, attempts=2, interval_s=0, sleep=Clock())
        return found.node_config

    assert [partition(v) for v in (50, 51, 52)] == [
        f"partition-id={i} num-partitions=3" for i in range(3)
    ]
    emulator.add_vm(53)
    emulator.add_node(7, "supernode", 53)
    assert partition(51) == "partition-id=1 num-partitions=4"
    assert partition(53) == "partition-id=3 num-partitions=4"
    emulator.services[7].roles[1].cardinality = 6  # OneFlow still creating the others
    assert partition(53) == "partition-id=3 num-partitions=6"


def test_partition_waits_until_this_vm_is_listed(emulator, tmp_path):
    emulator.add_vm(60)
    emulator.vms[60].user_template["SERVICE_ID"] = "7"
    config, reporter = setup(emulator, tmp_path, vmid=60, superlink_address="h:1",
                             tls_enabled=False)  # fmt: skip
    clock = Clock(t1=lambda: emulator.add_node(7, "supernode", 60))
    found = discover(config, reporter, attempts=3, interval_s=0, sleep=clock)
    assert found.node_config == "partition-id=3 num-partitions=4"
    assert found.sources["node_config"] == "position of VM 60 in role 'supernode'"
    config, reporter = setup(emulator, tmp_path, vmid=SUPERLINK, superlink_address="h:1",
                             tls_enabled=False)  # fmt: skip
    assert discover(config, reporter, attempts=1, sleep=Clock()).node_config == (
        "partition-id=0 num-partitions=1"
    )


def test_configured_address_does_not_wait_on_onegate_for_a_ca(emulator, tmp_path):
    config, reporter = setup(emulator, tmp_path, timeout=0.1, superlink_address="h:1",
                             node_config="x=1")  # fmt: skip
    emulator.set_faults(fail_for_s=60)
    clock = Clock()
    found = discover(config, reporter, attempts=30, interval_s=10, sleep=clock)
    assert found.ok and found.ca_pem is None and clock.calls == 0
    assert "system's CAs" in found.notes[-1]


def test_a_vm_not_yet_in_its_service_is_waited_for(emulator, tmp_path):
    """The real server answers /service with 400 `Service 7 does not contain VM 51.` until
    OneFlow lists the VM: discovery waits for it within its tries."""
    emulator.set_attributes(SUPERLINK, FL_ENDPOINT="superlink.example:9092")
    emulator.remove_node(7, "supernode", ME)
    config, reporter = setup(emulator, tmp_path, tls_enabled=False)
    found = discover(
        config, reporter, attempts=5, interval_s=0,
        sleep=Clock(t2=lambda: emulator.add_node(7, "supernode", ME)),
    )  # fmt: skip
    assert found.ok, found.problems
    assert found.superlink_address == "superlink.example:9092"
    statuses = [r.status for r in gets(emulator, "/service")]
    assert statuses[:2] == [400, 400] and statuses[-1] == 200


def test_a_vm_never_in_its_service_is_not_found_after_the_tries(emulator, tmp_path):
    emulator.remove_node(7, "supernode", ME)
    config, reporter = setup(emulator, tmp_path, tls_enabled=False)
    found = discover(config, reporter, attempts=3, interval_s=0, sleep=lambda s: None)
    assert [p.name for p in found.problems] == ["superlink_not_found"]
    assert "does not contain VM" in found.problems[0].message
    assert len(gets(emulator, "/service")) == 3


def test_the_superlinks_fl_version_is_read_raw_for_the_pairing(emulator, tmp_path):
    emulator.set_attributes(
        SUPERLINK, FL_ENDPOINT="10.0.0.41:9092", FL_CA_CERT=b64(CA), FL_VERSION=" 1.25.0 "
    )
    config, reporter = setup(emulator, tmp_path)
    found = discover(
        config, reporter, attempts=2, interval_s=0, ca_attempts=1, sleep=lambda s: None
    )
    assert found.ok and found.superlink_version == "1.25.0"
    assert found.to_dict()["superlink_version"] == "1.25.0"
    emulator.set_attributes(SUPERLINK, FL_VERSION="x" * 5000)
    hostile = discover(
        config, reporter, attempts=2, interval_s=0, ca_attempts=1, sleep=lambda s: None
    )
    assert len(hostile.superlink_version) == 64  # bounded here, refused by agent/pairing.py


def test_the_nic_fallback_uses_the_fleet_port_of_the_version_the_node_pairs_with(
    emulator, tmp_path
):
    emulator.set_attributes(SUPERLINK, FL_READY="YES", FL_TLS="NO", FL_VERSION="1.25.0")
    config, reporter = setup(emulator, tmp_path, tls_enabled=False)
    found = discover(config, reporter, attempts=2, interval_s=0, sleep=lambda s: None)
    assert found.superlink_address == "10.0.0.41:9092"  # 1.25's gRPC fleet, not 1.42's 8000
    pinned = Config(tls_enabled=False, flower_version_set=True)
    found = discover(pinned, reporter, attempts=2, interval_s=0, sleep=lambda s: None)
    assert found.superlink_address == "10.0.0.41:8000"
