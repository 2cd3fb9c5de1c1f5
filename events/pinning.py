"""Trusting a HakuRiver host by the fingerprint of its certificate authority (a pin).

A host with TLS on makes its own private certificate authority (control_plane/tls.py)
and prints its fingerprint, ``sha256:`` and the SHA-256 of the CA certificate's DER in
hex. A client given that fingerprint trusts the host as kubeadm's discovery hash does,
with no certificate authority to set up:

1. fetch the CA certificate from ``GET /api/tls/ca`` over a connection that verifies
   nothing (it holds no secret; anyone may read it);
2. refuse unless its SHA-256 is the pinned one (``PinMismatch``);
3. connect for real with a verifying context whose only trust root is that CA.

Step 3 is what refuses a man in the middle: one could answer step 1 with the genuine
CA certificate (it is public), but cannot present a certificate that CA signed. The
host name is not checked: the private CA signs only this host's certificates, so a
chain to it is proof enough, whatever address the client used (docs/decisions.md,
"TLS: a private CA per host, pinned by its fingerprint").

Why fetch the CA instead of reading the chain off the connection: Python 3.11's ``ssl``
cannot hand out an unverified peer chain (only the leaf), and a pin on the leaf would
change each time the host renews its certificate.

Only the standard library: the CLI and the node agent both use this module.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import threading
from pathlib import Path

PREFIX = "sha256:"
CA_ROUTE = "/api/tls/ca"
_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_ANSWER = 64 * 1024  # a CA certificate is a few hundred bytes of PEM


class BadFingerprint(ValueError):
    """A fingerprint that is not ``sha256:`` and 64 hex digits."""


class PinMismatch(ssl.SSLCertVerificationError):
    """The host's certificate authority is not the pinned one."""

    def __str__(self) -> str:
        return str(self.args[0])  # SSLError's own shows the args tuple


def parse_fingerprint(text: str) -> str:
    """``text`` as ``sha256:<64 lower-case hex>``; ``BadFingerprint`` saying why otherwise.

    Accepts what people paste: upper case, ``AB:CD:...`` (``openssl x509 -fingerprint``),
    with or without the ``sha256:`` prefix.
    """
    value = text.strip().lower()
    value = value.removeprefix(PREFIX).replace(":", "")
    if not _HEX.fullmatch(value):
        raise BadFingerprint(
            f"{text.strip()[:80]!r} is not a certificate fingerprint:"
            " expected sha256: followed by 64 hex digits (as `hakuriver host` prints it)"
        )
    return PREFIX + value


def fingerprint_of_der(der: bytes) -> str:
    """The fingerprint of a certificate in DER form."""
    return PREFIX + hashlib.sha256(der).hexdigest()


def fingerprint_of_pem(pem: str) -> str:
    """The fingerprint of the (first) certificate of a PEM text; ``ValueError`` if none."""
    return fingerprint_of_der(ssl.PEM_cert_to_DER_cert(_first_certificate(pem)))


def refusal(exc: ssl.SSLCertVerificationError, pin: str | None) -> str:
    """What to tell the user when the host's certificate was not trusted."""
    if isinstance(exc, PinMismatch):
        return str(exc)
    reason = getattr(exc, "verify_message", "") or str(exc)
    if pin:
        return (
            f"the host's certificate is not signed by the pinned certificate authority {pin}"
            f" ({reason}): refusing (a man in the middle, or the wrong host)"
        )
    return (
        f"the host's certificate is not trusted by this machine ({reason}); if the host made"
        " its own certificate authority, pin it: [network] ca_fingerprint or"
        " $HAKURIVER_CA_FINGERPRINT (`hakuriver host` prints it)"
    )


def fetch_ca_pem(host: str, port: int, *, prefix: str = "", timeout: float = 10.0) -> str:
    """The CA certificate the host serves at ``/api/tls/ca``, read without verifying anything.

    Never trust the answer before its fingerprint is checked (``PinnedTrust`` does).
    """
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (
        f"GET {prefix}{CA_ROUTE} HTTP/1.1\r\nHost: {netloc}\r\n"
        "Accept: application/x-pem-file\r\nConnection: close\r\n\r\n"
    )
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        insecure.wrap_socket(raw, server_hostname=_sni(host)) as sock,
    ):
        sock.sendall(request.encode("ascii"))
        answer = b""
        while len(answer) <= _MAX_ANSWER:
            piece = sock.recv(16384)
            if not piece:
                break
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    if status_line.split(" ")[1:2] != ["200"]:
        where = f"https://{netloc}{prefix}{CA_ROUTE}"
        raise ConnectionError(f"{where} answered {status_line[:80]!r}, not its CA certificate")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return body.decode("ascii", "replace")


def pinned_context(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts ``ca_pem`` alone, and any name it signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The private CA signs this host's certificates only: the chain is the proof.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=_first_certificate(ca_pem))
    return context


class PinnedTrust:
    """The TLS context for one host whose CA is pinned: fetched once, checked, cached.

    ``context()`` blocks (it may fetch the CA): async code calls it on a thread. The CA
    is kept in ``cache_dir`` as ``<hex>.pem`` when given, and checked again when read.
    """

    def __init__(
        self,
        host: str,
        port: int,
        fingerprint: str,
        *,
        prefix: str = "",
        cache_dir: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.fingerprint = parse_fingerprint(fingerprint)
        self.prefix = prefix
        self.cache_dir = cache_dir
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def context(self) -> ssl.SSLContext:
        """A context trusting the pinned CA only; ``PinMismatch`` if the host's is another."""
        with self._lock:
            if self._context is None:
                pem = self._cached() or self._fetch()
                self._context = pinned_context(pem)
            return self._context

    def _fetch(self) -> str:
        pem = fetch_ca_pem(self.host, self.port, prefix=self.prefix, timeout=self.timeout)
        try:
            found = fingerprint_of_pem(pem)
        except ValueError:
            found = "something that is not a certificate"
        if found != self.fingerprint:
            raise PinMismatch(
                f"the host's certificate authority {found} does not match the pinned"
                f" {self.fingerprint}: refusing (a man in the middle, or the wrong host)"
            )
        self._store(pem)
        return pem

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.fingerprint.removeprefix(PREFIX)}.pem"

    def _cached(self) -> str | None:
        path = self._cache_file()
        try:
            pem = path.read_text() if path is not None else None
            if pem is not None and fingerprint_of_pem(pem) == self.fingerprint:
                return pem
        except (OSError, ValueError):
            pass
        return None  # missing, unreadable or not the pinned CA: fetch it again

    def _store(self, pem: str) -> None:
        path = self._cache_file()
        if path is None:
            return
        try:  # a cache only: a read-only home is no reason to fail
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            temporary.write_text(pem)
            temporary.replace(path)
        except OSError:
            pass


def _first_certificate(pem: str) -> str:
    """The first ``BEGIN CERTIFICATE`` block of a PEM text; ``ValueError`` if none."""
    begin = "-----BEGIN CERTIFICATE-----"
    end = "-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate")
    return pem[start : stop + len(end)] + "\n"


def _sni(host: str) -> str | None:
    """The server name to send: none for an IP address (TLS forbids it)."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


def _unchunk(body: bytes) -> bytes:
    """A chunked body's bytes."""
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out
