"""Certificates through `cryptography`: checking a CA a SuperNode may trust, and the TLS
material of a SuperLink (its own CA and server certificate, or the operator's).

## Checking a CA

The text comes from the VM owner (FL_SSL_CA_CERT) or from a peer VM through OneGate
(FL_CA_CERT), so it is bounded before it is parsed, and parsed by the library's PEM and DER
readers (linear in the input), never by a pattern of our own. gRPC inside the container does
the handshake; this check turns a corrupt, expired or wrong certificate into a clear
`tls_error` at boot instead of a handshake failure later.

A CA is accepted when every certificate in the text is one: the basicConstraints extension
says CA:TRUE, or, without that extension, the certificate is self-signed (a version 1 root).
A leaf (CA:FALSE, or issued by someone else without the extension) is refused, and so is a
CA whose keyUsage forbids signing certificates.

## A SuperLink's material

The CA is created once and kept: SuperNodes pin it (it is published as FL_CA_CERT), so a new
CA would cut every node off. The server certificate is reused while it is signed by that CA,
still valid beyond the renewal margin and carries exactly the wanted SANs; otherwise it is
issued again under the same CA, and only then does the SuperLink need a restart. An operator
may bring their own CA, certificate and key (FL_SSL_CA_CERT, FL_SSL_CERT, FL_SSL_KEY), which are
checked (parse, key matches certificate, certificate signed by the CA, dates) before use.

Pure parts: `cert_facts` (what a loaded certificate says), `renewal` (reuse or issue, and why),
`operator_material_problems`. Thin effectful parts: `ensure_server_tls`,
`install_operator_material`; every write is atomic, keys 0600.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from agent.atomicfile import write_atomic
from agent.errors import Problem

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from agent.paths import Root

MAX_PEM_CHARS = 64 * 1024
"""A CA bundle of a few certificates is a few KiB; anything larger is not what we expect."""
MAX_CERTIFICATES = 8


def check_ca(pem: str, *, now: datetime | None = None) -> tuple[str | None, str]:
    """(the certificates as clean PEM, "") when `pem` holds usable CAs; (None, why) when not."""
    if len(pem) > MAX_PEM_CHARS:
        return None, f"{len(pem)} characters, more than the {MAX_PEM_CHARS} a CA bundle may have"
    if not pem.isascii():
        return None, "not ASCII text (PEM is ASCII)"
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if "-----BEGIN CERTIFICATE-----" not in pem:
        return None, "no -----BEGIN CERTIFICATE----- block"
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except ValueError:
        return None, "not an X.509 certificate (its PEM or DER cannot be read)"
    if len(certificates) > MAX_CERTIFICATES:
        return None, f"{len(certificates)} certificates, more than {MAX_CERTIFICATES}"
    now = now or datetime.now(UTC)
    for number, certificate in enumerate(certificates, 1):
        why = _not_a_usable_ca(certificate, now)
        if why:
            return None, f"certificate {number} ({_subject(certificate)}) {why}"
    return "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certificates), ""


def fingerprints(pem: str) -> tuple[str, ...]:
    """SHA-256 fingerprints (hex) of the certificates in a clean PEM text (from `check_ca`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certificates = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return ()
    return tuple(hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest() for c in certificates)


def _not_a_usable_ca(certificate, now: datetime) -> str | None:
    """Why `certificate` is not a CA valid at `now`; None when it is one."""
    try:
        not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    except ValueError as exc:
        return f"has an unreadable validity ({_first_line(exc)})"
    if now < not_before:
        return f"is valid only from {not_before:%Y-%m-%d %H:%M} UTC"
    if now > not_after:
        return f"expired on {not_after:%Y-%m-%d %H:%M} UTC"
    from cryptography import x509

    try:
        extensions = certificate.extensions
    except ValueError as exc:
        return f"has unreadable extensions ({_first_line(exc)})"
    constraints = _extension(extensions, x509.BasicConstraints)
    if constraints is not None and not constraints.ca:
        return "is a leaf certificate (CA:FALSE), not a CA"
    if constraints is None and not _self_signed(certificate):
        return "is not a CA: no CA:TRUE basic constraint and not self-signed"
    usage = _extension(extensions, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        return "is not a CA: its key usage does not allow signing certificates"
    return None


def _extension(extensions, kind):
    """The value of the extension of class `kind`, None when the certificate has none."""
    from cryptography import x509

    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _self_signed(certificate) -> bool:
    if certificate.issuer != certificate.subject:
        return False
    from cryptography.exceptions import InvalidSignature

    try:
        certificate.verify_directly_issued_by(certificate)
    except (InvalidSignature, ValueError, TypeError):  # TypeError: an unsupported key type
        return False
    return True


def _subject(certificate) -> str:
    try:
        text = certificate.subject.rfc4514_string()
    except ValueError:
        return "unreadable subject"
    return text if len(text) <= 80 else text[:77] + "..."


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


TLS_DIR = "/var/lib/fl-agent/tls"
"""Kept across reboots: the CA in it is what every SuperNode of the federation pins."""
CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=365)
RENEW_MARGIN = timedelta(days=30)
"""A server certificate expiring within this margin is renewed at the next convergence."""
CA_NAME = "fl-agent SuperLink CA"
_BACKDATE = timedelta(minutes=5)
"""notBefore lies a little in the past, so a peer whose clock is slightly behind accepts it."""


@dataclass(frozen=True)
class TlsFiles:
    """The four files under one directory; flower-superlink reads them by path."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"


def tls_files(root: Root) -> TlsFiles:
    """The agent's own CA and server certificate."""
    return TlsFiles(root.path(TLS_DIR))


def operator_tls_files(root: Root) -> TlsFiles:
    """The operator's material, apart from the agent's own: switching between the two loses
    neither, and the kept CA key is never paired with a foreign CA certificate."""
    return TlsFiles(root.path(TLS_DIR) / "operator")


LOOPBACK_SAN = "IP:127.0.0.1"
"""Always a SAN: from 1.35 the SuperLink's own SuperExec dials its Runtime API on 127.0.0.1
over TLS with the same certificate (seen on 1.42.0: "certificate is not valid for
'127.0.0.1'" without it), and the agent's own `flwr` calls go there too."""


def wanted_sans(ips: tuple[str, ...], hostname: str | None) -> frozenset[str]:
    """SAN set as compared by `renewal`: "IP:<addr>" and "DNS:<name>" entries, normalised."""
    sans = {LOOPBACK_SAN} | {f"IP:{ipaddress.ip_address(ip)}" for ip in ips}
    if hostname:
        sans.add(f"DNS:{hostname.lower()}")
    return frozenset(sans)


@dataclass(frozen=True)
class CertFacts:
    """What `renewal` needs to know about a certificate on disk."""

    not_before: datetime
    not_after: datetime
    sans: frozenset[str]
    signed_by_ca: bool
    key_matches: bool


@dataclass(frozen=True)
class Renewal:
    """The decision for the server certificate: reuse it, or issue one (and why)."""

    issue: bool
    reason: str


def cert_facts(cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> CertFacts:
    """Facts about a server certificate, its key and the CA it should chain to (pure).

    Raises ValueError when one of the three does not parse.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    return CertFacts(
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sans=_sans(cert),
        signed_by_ca=_signed_by(cert, ca),
        key_matches=_same_key(cert.public_key(), key.public_key()),
    )


def renewal(
    facts: CertFacts | None,
    wanted: frozenset[str],
    now: datetime,
    margin: timedelta = RENEW_MARGIN,
) -> Renewal:
    """Reuse the certificate only while nothing speaks against it (pure)."""
    if facts is None:
        return Renewal(True, "no server certificate yet")
    if not facts.signed_by_ca:
        return Renewal(True, "server certificate not signed by the kept CA")
    if not facts.key_matches:
        return Renewal(True, "server key does not match the certificate")
    if facts.sans != wanted:
        added = ", ".join(sorted(wanted - facts.sans)) or "none"
        dropped = ", ".join(sorted(facts.sans - wanted)) or "none"
        return Renewal(True, f"SANs changed (added: {added}; dropped: {dropped})")
    if now < facts.not_before:
        return Renewal(True, "server certificate not valid yet (clock moved back)")
    if facts.not_after - now <= margin:
        return Renewal(True, f"server certificate expires {facts.not_after:%Y-%m-%d}")
    return Renewal(False, f"valid until {facts.not_after:%Y-%m-%d}, SANs match")


@dataclass(frozen=True)
class ServerTls:
    """What `ensure_server_tls` left on disk and whether the SuperLink must restart for it."""

    files: TlsFiles
    ca_created: bool
    renewal: Renewal

    @property
    def changed(self) -> bool:
        return self.ca_created or self.renewal.issue


def ensure_server_tls(
    files: TlsFiles,
    sans: frozenset[str],
    *,
    now: datetime | None = None,
    server_validity: timedelta = SERVER_VALIDITY,
    key_owner: tuple[int, int] | None = None,
) -> ServerTls:
    """Keep or create the CA, then reuse or issue the server certificate for `sans`.

    `key_owner` (uid, gid) owns the server key: the SuperLink container's user, which must read
    it. The CA key stays root's: only the agent signs.
    """
    now = now or datetime.now(UTC)
    ca_created = not (files.ca_cert.exists() and files.ca_key.exists())
    if ca_created:
        _write_pair(files.ca_cert, files.ca_key, *_new_ca(now))
    ca_cert, ca_key = _load_pair(files.ca_cert, files.ca_key)
    decision = renewal(facts_on_disk(files), sans, now)
    if decision.issue:
        cert, key = _new_server_cert(ca_cert, ca_key, sans, now, server_validity)
        _write_pair(files.server_cert, files.server_key, cert, key, key_owner)
    return ServerTls(files, ca_created, decision)


def operator_material_problems(
    ca_pem: bytes, cert_pem: bytes, key_pem: bytes, *, now: datetime | None = None
) -> tuple[Problem, ...]:
    """Why the operator's CA, certificate and key cannot be used (empty when they can)."""
    from cryptography.exceptions import UnsupportedAlgorithm

    now = now or datetime.now(UTC)
    usable, why = check_ca(ca_pem.decode("ascii", errors="replace"), now=now)
    if usable is None:  # every SuperNode would refuse it (agent/discovery.py checks the same)
        return (_operator_problem(f"FL_SSL_CA_CERT: {why}"),)
    try:
        facts = cert_facts(cert_pem, key_pem, ca_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return (_operator_problem(f"does not parse as PEM ({type(exc).__name__})"),)
    problems = []
    if not facts.key_matches:
        problems.append(_operator_problem("FL_SSL_KEY is not the key of FL_SSL_CERT"))
    if not facts.signed_by_ca:
        problems.append(_operator_problem("FL_SSL_CERT is not signed by FL_SSL_CA_CERT"))
    if not facts.not_before <= now < facts.not_after:
        problems.append(
            _operator_problem(
                f"FL_SSL_CERT is valid {facts.not_before:%Y-%m-%d} to {facts.not_after:%Y-%m-%d}"
            )
        )
    return tuple(problems)


def install_operator_material(
    files: TlsFiles,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    key_owner: tuple[int, int] | None = None,
) -> bool:
    """Write checked operator material where the SuperLink reads it; True when it changed
    (the SuperLink then restarts). There is no CA key: the operator keeps it."""
    wanted = {files.ca_cert: ca_pem, files.server_cert: cert_pem, files.server_key: key_pem}
    changed = [p for p, data in wanted.items() if not p.exists() or p.read_bytes() != data]
    for path in changed:
        if path == files.server_key:
            write_atomic(path, key_pem, mode=0o600, owner=key_owner)
        else:
            write_atomic(path, wanted[path], mode=0o644)
    return bool(changed)


def _operator_problem(message: str) -> Problem:
    return Problem(
        "tls_operator_material_invalid",
        "FL_SSL_CA_CERT/FL_SSL_CERT/FL_SSL_KEY",
        message,
        "supply base64 PEM of the CA, a server certificate it signed and that certificate's "
        "unencrypted key, or leave all three empty to let the agent make its own",
    )


def facts_on_disk(files: TlsFiles) -> CertFacts | None:
    """The server certificate's facts as on disk; None when absent or unreadable (reissued)."""
    from cryptography.exceptions import UnsupportedAlgorithm

    if not (files.server_cert.exists() and files.server_key.exists()):
        return None
    try:
        return cert_facts(
            files.server_cert.read_bytes(),
            files.server_key.read_bytes(),
            files.ca_cert.read_bytes(),
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None  # unreadable: issue a new one


def _sans(cert: x509.Certificate) -> frozenset[str]:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    ips = {f"IP:{ip}" for ip in ext.get_values_for_type(x509.IPAddress)}
    names = {f"DNS:{name.lower()}" for name in ext.get_values_for_type(x509.DNSName)}
    return frozenset(ips | names)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _same_key(a: object, b: object) -> bool:
    from cryptography.hazmat.primitives import serialization

    def der(key) -> bytes:
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    return der(a) == der(b)


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_ca(now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server_cert(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: frozenset[str],
    now: datetime,
    validity: timedelta,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _new_key()
    general = [
        x509.IPAddress(ipaddress.ip_address(s[3:])) if s.startswith("IP:") else x509.DNSName(s[4:])
        for s in sorted(sans)
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fl-agent SuperLink"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + validity, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_pair(
    cert_path: Path, key_path: Path, cert, key, key_owner: tuple[int, int] | None = None
) -> None:
    """Key first (0600), then the certificate: a crash between leaves a pair `renewal` redoes."""
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(key_path, key_pem, mode=0o600, owner=key_owner)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _load_pair(cert_path: Path, key_path: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return cert, key
