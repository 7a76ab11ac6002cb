"""agent/nodeauth.py: the SuperNode's key pair, the keys of the service's SuperNode role only,
and the registration diff."""

from __future__ import annotations

import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from agent import nodeauth


def _openssh(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def test_key_created_once_and_kept_0600(tmp_path):
    first = nodeauth.ensure_node_key(tmp_path / "k")
    assert stat.S_IMODE(first.private_key.stat().st_mode) == 0o600
    assert first.public_openssh.startswith("ecdsa-sha2-nistp384 ")
    assert first.public_key.read_text() == first.public_openssh + "\n"
    again = nodeauth.ensure_node_key(tmp_path / "k")
    assert again == first


def test_a_kept_key_is_given_to_a_new_owner_and_stays_the_same_key(tmp_path):
    first = nodeauth.ensure_node_key(tmp_path / "k", owner=(49999, 49999))
    assert (first.private_key.stat().st_uid, first.private_key.stat().st_gid) == (49999, 49999)
    again = nodeauth.ensure_node_key(tmp_path / "k", owner=(1000, 1001))  # the image's user
    stat = again.private_key.stat()
    assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o777) == (1000, 1001, 0o600)
    assert again.public_openssh == first.public_openssh


def test_key_is_what_flower_loads(tmp_path):
    """flower-supernode loads the private key with load_ssh_private_key and needs an EC key;
    `flwr supernode register` loads the public key with load_ssh_public_key (flwr 1.25.0 and
    1.42.0 source: supernode/cli/flower_supernode.py, cli/supernode/register.py)."""
    key = nodeauth.ensure_node_key(tmp_path)
    private = serialization.load_ssh_private_key(key.private_key.read_bytes(), None)
    public = serialization.load_ssh_public_key(key.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert _openssh(private) == key.public_openssh
    assert isinstance(public, ec.EllipticCurvePublicKey)


def test_an_unreadable_key_is_replaced(tmp_path):
    first = nodeauth.ensure_node_key(tmp_path)
    first.private_key.write_text("garbage")
    second = nodeauth.ensure_node_key(tmp_path)
    assert second.public_openssh != first.public_openssh
    assert second.public_key.read_text().strip() == second.public_openssh


P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (_openssh(P256), True),
        (_openssh(P384) + " comment@host\n", True),
        (_openssh(ec.generate_private_key(ec.SECP521R1())), True),
        (_openssh(ed25519.Ed25519PrivateKey.generate()), False),
        (_openssh(rsa.generate_private_key(public_exponent=65537, key_size=2048)), False),
        ("ecdsa-sha2-nistp256 AAAA", False),
        ("x" * 5000, False),
        (None, False),
    ],
)
def test_normalised_public_key(text, ok):
    result = nodeauth.normalised_public_key(text)
    assert (result is not None) is ok
    if ok:
        assert result == text.split(" comment")[0].strip()


def _vm(vm_id: int, key: str | None) -> dict:
    template = {} if key is None else {nodeauth.PUBLIC_KEY_ATTRIBUTE: key}
    return {"deploy_id": vm_id, "vm_info": {"VM": {"ID": str(vm_id), "USER_TEMPLATE": template}}}


def _service(roles: dict[str, list[dict]]) -> dict:
    return {"SERVICE": {"name": "fl", "roles": [{"name": n, "nodes": v} for n, v in roles.items()]}}


A, B, C = (_openssh(ec.generate_private_key(ec.SECP384R1())) for _ in range(3))


def test_only_the_supernode_roles_keys():
    service = _service(
        {
            "superlink": [_vm(1, C)],
            "supernode": [_vm(2, A), _vm(3, B + " me@vm3"), _vm(4, None), _vm(5, "rsa junk")],
            "monitoring": [_vm(6, C)],
        }
    )
    found = nodeauth.service_node_keys(service)
    assert found.keys == frozenset({A, B})
    assert found.refused_vms == ("5",)


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        "SERVICE",
        {"SERVICE": None},
        {"SERVICE": {"roles": "supernode"}},
        {"SERVICE": {"roles": [{"name": "supernode", "nodes": "x"}]}},
        {"SERVICE": {"roles": [{"name": "supernode", "nodes": [1, "a", None]}]}},
        {"SERVICE": {"roles": [{"name": "supernode", "nodes": [{"vm_info": []}]}]}},
        {"SERVICE": {"roles": [{"name": "supernode", "nodes": [{"vm_info": {"VM": "x"}}]}]}},
        _service({"supernode": [_vm(2, {"nested": A})]}),
    ],
)
def test_hostile_shapes_give_no_keys(document):
    assert nodeauth.service_node_keys(document).keys == frozenset()


def test_registration_diff():
    diff = nodeauth.registration_diff(frozenset({A, B}), {B: 12, C: 13})
    assert diff == nodeauth.RegistrationDiff(register=(A,), unregister=(13,))
    assert nodeauth.registration_diff(frozenset({A}), {A: 1}) == nodeauth.RegistrationDiff((), ())


def test_key_dir_lives_under_the_root_prefix(tmp_path):
    from agent.paths import Root

    key = nodeauth.ensure_node_key(nodeauth.node_key_dir(Root(tmp_path)))
    assert key.private_key == tmp_path / "var/lib/fl-agent/node-key/node.key"
