"""agent/tls.py: the SuperLink's CA and server certificate, reuse and renewal, operator material,
and a real TLS handshake through Python's ssl with the generated chain."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from datetime import UTC, datetime, timedelta

import pytest

from agent import tls

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SANS = tls.wanted_sans(("10.0.0.5", "192.168.1.5"), "SuperLink-1")


@pytest.fixture
def files(tmp_path) -> tls.TlsFiles:
    return tls.TlsFiles(tmp_path / "tls")


def test_first_call_creates_ca_and_server_cert_keys_0600(files):
    result = tls.ensure_server_tls(files, SANS, now=NOW)
    assert result.ca_created and result.renewal.issue and result.changed
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    facts = _facts(files)
    assert facts.signed_by_ca and facts.key_matches
    assert facts.sans == SANS
    assert {"IP:127.0.0.1", "IP:10.0.0.5", "IP:192.168.1.5", "DNS:superlink-1"} == SANS


def test_second_call_reuses_everything(files):
    tls.ensure_server_tls(files, SANS, now=NOW)
    before = {p: p.read_bytes() for p in files.directory.iterdir()}
    result = tls.ensure_server_tls(files, SANS, now=NOW + timedelta(days=1))
    assert not result.changed
    assert "SANs match" in result.renewal.reason
    assert {p: p.read_bytes() for p in files.directory.iterdir()} == before


def test_near_expiry_renews_under_the_same_ca(files):
    tls.ensure_server_tls(files, SANS, now=NOW)
    ca, old = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    later = NOW + tls.SERVER_VALIDITY - tls.RENEW_MARGIN + timedelta(hours=1)
    result = tls.ensure_server_tls(files, SANS, now=later)
    assert result.renewal.issue and not result.ca_created
    assert "expires" in result.renewal.reason
    assert files.ca_cert.read_bytes() == ca
    assert files.server_cert.read_bytes() != old
    facts = _facts(files)
    assert facts.signed_by_ca and facts.not_after > later + tls.RENEW_MARGIN


def test_a_san_change_renews(files):
    tls.ensure_server_tls(files, SANS, now=NOW)
    moved = tls.wanted_sans(("10.0.0.6", "192.168.1.5"), "superlink-1")
    result = tls.ensure_server_tls(files, moved, now=NOW)
    assert result.renewal.issue
    assert "added: IP:10.0.0.6" in result.renewal.reason
    assert "dropped: IP:10.0.0.5" in result.renewal.reason
    assert _facts(files).sans == moved


def test_a_lost_ca_key_makes_a_new_ca_and_a_new_server_cert(files):
    tls.ensure_server_tls(files, SANS, now=NOW)
    files.ca_key.unlink()
    result = tls.ensure_server_tls(files, SANS, now=NOW)
    assert result.ca_created
    assert result.renewal.reason == "server certificate not signed by the kept CA"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"signed_by_ca": False}, "not signed by the kept CA"),
        ({"key_matches": False}, "key does not match"),
        ({"not_before": NOW + timedelta(days=1)}, "not valid yet"),
        ({"not_after": NOW + timedelta(days=30)}, "expires"),
    ],
)
def test_renewal_reasons(change, reason):
    facts = tls.CertFacts(
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=300),
        sans=SANS,
        signed_by_ca=True,
        key_matches=True,
    )
    assert not tls.renewal(facts, SANS, NOW).issue
    bad = tls.renewal(tls.CertFacts(**{**facts.__dict__, **change}), SANS, NOW)
    assert bad.issue and reason in bad.reason


def test_operator_material_accepted(files, tmp_path):
    ca, cert, key = _material(files)
    assert tls.operator_material_problems(ca, cert, key, now=NOW) == ()
    target = tls.TlsFiles(tmp_path / "operator")
    assert tls.install_operator_material(target, ca, cert, key) is True
    assert stat.S_IMODE(target.server_key.stat().st_mode) == 0o600
    assert not target.ca_key.exists()
    assert tls.install_operator_material(target, ca, cert, key) is False


def test_operator_material_refused(files, tmp_path):
    ca, cert, key = _material(files)
    other = tls.TlsFiles(tmp_path / "other")
    tls.ensure_server_tls(other, SANS, now=NOW)
    other_ca, other_key = other.ca_cert.read_bytes(), other.server_key.read_bytes()

    def names(*material, now=NOW):
        return [p.message for p in tls.operator_material_problems(*material, now=now)]

    assert names(other_ca, cert, key) == ["FL_SSL_CERT is not signed by FL_SSL_CA_CERT"]
    assert names(ca, cert, other_key) == ["FL_SSL_KEY is not the key of FL_SSL_CERT"]
    assert "valid" in names(ca, cert, key, now=NOW + timedelta(days=400))[0]
    garbage = tls.operator_material_problems(ca, b"not a certificate", key, now=NOW)
    assert garbage[0].name == "tls_operator_material_invalid"
    assert "does not parse" in garbage[0].message


def test_server_key_owner_is_set_before_it_appears(files):
    import os

    uid_gid = (os.getuid(), os.getgid())
    tls.ensure_server_tls(files, SANS, now=NOW, key_owner=uid_gid)
    info = files.server_key.stat()
    assert (info.st_uid, info.st_gid) == uid_gid


def test_real_handshake_with_the_generated_chain(files):
    """A Python ssl server presents the generated certificate; a client that trusts only the
    generated CA verifies it for an IP SAN and the hostname SAN, and refuses another name."""
    tls.ensure_server_tls(files, tls.wanted_sans((), "superlink-1"))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))

    assert _handshake(server_ctx, client_ctx, "127.0.0.1") == "fl-agent SuperLink"
    assert _handshake(server_ctx, client_ctx, "superlink-1") == "fl-agent SuperLink"
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(server_ctx, client_ctx, "elsewhere")
    other = tls.TlsFiles(files.directory.parent / "other")
    tls.ensure_server_tls(other, tls.wanted_sans((), "superlink-1"))
    untrusting = ssl.create_default_context(cafile=str(other.ca_cert))
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(server_ctx, untrusting, "127.0.0.1")


def _handshake(server_ctx, client_ctx, server_name: str) -> str:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.recv(1)
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_name) as conn,
            ):
                subject = dict(x[0] for x in conn.getpeercert()["subject"])
                return subject["commonName"]
        finally:
            thread.join(timeout=10)


def _facts(files: tls.TlsFiles) -> tls.CertFacts:
    return tls.cert_facts(
        files.server_cert.read_bytes(), files.server_key.read_bytes(), files.ca_cert.read_bytes()
    )


def _material(files: tls.TlsFiles) -> tuple[bytes, bytes, bytes]:
    """A CA, a certificate it signed and that certificate's key, as an operator would bring."""
    tls.ensure_server_tls(files, SANS, now=NOW)
    return files.ca_cert.read_bytes(), files.server_cert.read_bytes(), files.server_key.read_bytes()


def test_files_live_under_the_root_prefix(tmp_path):
    from agent.paths import Root

    own, operator = tls.tls_files(Root(tmp_path)), tls.operator_tls_files(Root(tmp_path))
    assert own.ca_key == tmp_path / "var/lib/fl-agent/tls/ca.key"
    assert operator.server_key == tmp_path / "var/lib/fl-agent/tls/operator/server.key"
