"""Certificates through `cryptography`: is this PEM text a CA certificate a SuperNode may trust?

The text comes from the VM owner (FL_SSL_CA_CERT) or from a peer VM through OneGate
(FL_CA_CERT), so it is bounded before it is parsed, and parsed by the library's PEM and DER
readers (linear in the input), never by a pattern of our own. gRPC inside the container does
the handshake; this check turns a corrupt, expired or wrong certificate into a clear
`tls_error` at boot instead of a handshake failure later.

A CA is accepted when every certificate in the text is one: the basicConstraints extension
says CA:TRUE, or, without that extension, the certificate is self-signed (a version 1 root).
A leaf (CA:FALSE, or issued by someone else without the extension) is refused, and so is a
CA whose keyUsage forbids signing certificates.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

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
