"""The host's TLS: its own certificate authority and server certificate, or the user's.

With ``[network] tls`` on (control_plane/settings.py says when), the host serves HTTPS
and WSS. Unless ``tls_cert``/``tls_key`` name a certificate of the user's, it keeps its
own under ``<data_dir>/tls/``:

- ``ca.pem``, ``ca.key``: a private certificate authority made on first start and kept
  for ever: its fingerprint (``sha256:`` + SHA-256 of its DER) is what clients pin
  (events/pinning.py), so making a new one means giving every client the new one;
- ``server.pem``, ``server.key``: the certificate the host presents, signed by that CA
  for the host's names and addresses; made again at start whenever the names changed,
  the CA changed, or it has less than a month left (the fingerprint stays the same).

Keys are written 0600 (the folder 0700). Making them takes milliseconds (ECDSA P-256).
The caller holds the event log's lock, so two hosts never write these files at once.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.settings import HostSettings, SettingsError
from events.pinning import fingerprint_of_der, fingerprint_of_pem

CA_YEARS = 20
SERVER_DAYS = 825
RENEW_BEFORE = datetime.timedelta(days=30)
_DNS_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
_WILDCARDS = ("0.0.0.0", "::", "")

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class HostTls:
    """What the host serves TLS with, and what clients may pin."""

    cert_file: Path
    key_file: Path
    ca_pem: str | None  # served at /api/tls/ca; None: a user certificate without tls_ca
    fingerprint: str | None  # of ca_pem
    ca_file: Path | None

    def server_context(self) -> ssl.SSLContext:
        """The context Sanic serves HTTPS and WSS with."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def prepare_tls(settings: HostSettings) -> HostTls | None:
    """The host's TLS material (made or renewed as needed); None when TLS is off."""
    if not settings.tls_enabled:
        return None
    network = settings.network
    if network.tls_cert:
        return _supplied(settings)
    folder = settings.path("tls")
    try:
        return ensure_own(folder, server_names(settings))
    except OSError as exc:
        raise SettingsError(
            f"TLS: cannot keep the host's certificates in {folder}: {exc}"
        ) from None


def server_names(settings: HostSettings) -> list[str]:
    """The names and addresses the host's certificate is for."""
    network = settings.network
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    if network.host_bind_ip in _WILDCARDS:
        names += _interface_addresses()
    else:
        names.append(network.host_bind_ip)
    names.append(network.host_reachable_address)
    return list(dict.fromkeys(n for n in names if n))


def ensure_own(folder: Path, names: list[str]) -> HostTls:
    """The host's own CA and a server certificate for ``names`` under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca_cert, ca_key = _certificate_authority(folder)
    server_file, server_key = folder / "server.pem", folder / "server.key"
    if not _server_still_good(server_file, server_key, ca_cert, names):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _server_certificate(key, ca_cert, ca_key, names)
        _write_key(server_key, key)
        _write(server_file, cert.public_bytes(serialization.Encoding.PEM))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    return HostTls(
        cert_file=server_file,
        key_file=server_key,
        ca_pem=ca_pem,
        fingerprint=fingerprint_of_der(ca_cert.public_bytes(serialization.Encoding.DER)),
        ca_file=folder / "ca.pem",
    )


def make_authority(common_name: str) -> tuple[x509.Certificate, PrivateKey]:
    """A new certificate authority (self-signed; signs server certificates only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HakuRiver"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _server_certificate(
    key: PrivateKey, ca_cert: x509.Certificate, ca_key: PrivateKey, names: list[str]
) -> x509.Certificate:
    """A server certificate for ``names``, signed by the CA."""
    now = _now()
    common = next((n for n in names if n not in ("localhost", "127.0.0.1", "::1")), names[0])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _certificate_authority(folder: Path) -> tuple[x509.Certificate, PrivateKey]:
    """The CA kept in ``folder``, made if neither of its files exists."""
    cert_file, key_file = folder / "ca.pem", folder / "ca.key"
    if not cert_file.exists() and not key_file.exists():
        cert, key = make_authority(f"HakuRiver CA {socket.gethostname()}")
        _write_key(key_file, key)
        _write(cert_file, cert.public_bytes(serialization.Encoding.PEM))
        return cert, key
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SettingsError(
            f"TLS: cannot load the host's certificate authority from {folder}"
            f" ({exc}); restore ca.pem and ca.key, or remove both to make a new one"
            " (every client must then pin the new fingerprint)"
        ) from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or (
        loaded.public_key().public_numbers() != cert.public_key().public_numbers()  # type: ignore[union-attr]
    ):
        raise SettingsError(f"TLS: {key_file} is not the key of {cert_file}")
    return cert, loaded


def _server_still_good(
    cert_file: Path, key_file: Path, ca_cert: x509.Certificate, names: list[str]
) -> bool:
    """Whether the server certificate on disk may be served again as it is."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return False
    same_key = key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    fresh = cert.not_valid_after_utc - _now() > RENEW_BEFORE
    return same_key and fresh and set(_general_names(names)) <= set(sans)


def _supplied(settings: HostSettings) -> HostTls:
    """The user's certificate (``tls_cert``, ``tls_key``) and its CA (``tls_ca``) if given."""
    network = settings.network
    tls = HostTls(
        cert_file=settings.path(network.tls_cert),
        key_file=settings.path(network.tls_key),
        ca_pem=None,
        fingerprint=None,
        ca_file=None,
    )
    try:
        tls.server_context()
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(
            f"configuration: [network] tls_cert/tls_key: cannot serve {tls.cert_file}"
            f" with {tls.key_file}: {exc}"
        ) from None
    if not network.tls_ca:
        return tls
    ca_file = settings.path(network.tls_ca)
    try:
        ca_pem = ca_file.read_text()
        fingerprint = fingerprint_of_pem(ca_pem)
    except (OSError, ValueError) as exc:
        raise SettingsError(
            f"configuration: [network] tls_ca: no PEM certificate in {ca_file} ({exc})"
        ) from None
    return HostTls(
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        ca_pem=ca_pem,
        fingerprint=fingerprint,
        ca_file=ca_file,
    )


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    found: list[x509.GeneralName] = []
    for name in names:
        try:
            found.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if _DNS_NAME.fullmatch(name):
                found.append(x509.DNSName(name.lower()))
    return found


def _interface_addresses() -> list[str]:
    """This machine's addresses, for a host listening on every interface."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]  # no stubs in the lock

        found = {
            a.address.split("%", 1)[0]
            for entries in psutil.net_if_addrs().values()
            for a in entries
            if a.family in (socket.AF_INET, socket.AF_INET6)
        }
    except Exception:  # not allowed to look: the certificate names fewer addresses
        return []
    # Link-local ones come and go with every container's veth: not a way in anyway.
    return sorted(a for a in found if not ipaddress.ip_address(a).is_link_local)


def _write_key(path: Path, key: PrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, data, mode=0o600)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` whole or not at all, created with ``mode`` (no window at 0644 for a key)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # an older file of that name may have had another mode
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
