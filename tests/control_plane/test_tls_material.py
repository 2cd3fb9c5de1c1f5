"""The host's TLS settings and material: when it is on, what it makes, what it refuses."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from control_plane.settings import HostSettings, SettingsError
from control_plane.tls import ensure_own, prepare_tls


def settings(tmp_path: Path, **network: Any) -> HostSettings:
    return HostSettings.from_mapping({"network": network}, data_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("network", "url"),
    [
        ({}, "http://127.0.0.1:8000"),  # the default, and `hakuriver up`: loopback, plain
        ({"host_bind_ip": "0.0.0.0"}, "https://127.0.0.1:8000"),
        (
            {"host_bind_ip": "10.0.0.1", "host_reachable_address": "10.0.0.1"},
            "https://10.0.0.1:8000",
        ),
        ({"host_bind_ip": "0.0.0.0", "tls": False}, "http://127.0.0.1:8000"),
        ({"tls": True}, "https://127.0.0.1:8000"),
        ({"tls_cert": "c.pem", "tls_key": "k.pem"}, "https://127.0.0.1:8000"),
        ({"host_reachable_address": "::1", "tls": True}, "https://[::1]:8000"),
    ],
)
def test_tls_auto_is_on_beyond_loopback_or_with_a_certificate(
    tmp_path: Path, network: dict[str, Any], url: str
) -> None:
    found = settings(tmp_path, **network)
    assert found.url == url
    assert found.tls_enabled is url.startswith("https")


@pytest.mark.parametrize(
    ("network", "named"),
    [
        ({"tls_cert": "c.pem"}, "tls_cert is set but tls_key is not"),
        ({"tls_key": "k.pem"}, "tls_key is set but tls_cert is not"),
        ({"tls_ca": "ca.pem"}, "tls_ca"),
        ({"tls": False, "tls_cert": "c.pem", "tls_key": "k.pem"}, "tls = false"),
        ({"tls": "yes"}, "network.tls"),
    ],
)
def test_tls_keys_that_contradict_are_refused_naming_the_key(
    tmp_path: Path, network: dict[str, Any], named: str
) -> None:
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        settings(tmp_path, **network)


def test_the_ca_is_kept_and_the_server_certificate_renewed_when_the_names_change(
    tmp_path: Path,
) -> None:
    # Given a first start, with a umask that would leave new files open to everyone
    folder = tmp_path / "tls"
    old = os.umask(0)
    try:
        first = ensure_own(folder, ["127.0.0.1", "head"])
    finally:
        os.umask(old)
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600
    server = (folder / "server.pem").read_bytes()

    # When the host starts again with the same names: nothing is made again
    again = ensure_own(folder, ["127.0.0.1", "head"])
    assert again.fingerprint == first.fingerprint
    assert (folder / "server.pem").read_bytes() == server

    # When it is reached at a new address: a new certificate for it, from the same CA
    moved = ensure_own(folder, ["127.0.0.1", "head", "10.1.2.3"])
    assert moved.fingerprint == first.fingerprint
    renewed = x509.load_pem_x509_certificate((folder / "server.pem").read_bytes())
    names = renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.1.2.3" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert "head" in names.get_values_for_type(x509.DNSName)


def test_a_ca_without_its_key_is_refused_not_silently_replaced(tmp_path: Path) -> None:
    # A new CA would break every client's pin: the host says so instead of making one
    folder = tmp_path / "tls"
    ensure_own(folder, ["127.0.0.1"])
    (folder / "ca.key").unlink()
    with pytest.raises(SettingsError, match=r"restore ca\.pem and ca\.key, or remove both"):
        ensure_own(folder, ["127.0.0.1"])


def test_a_certificate_of_the_users_is_served_with_the_fingerprint_of_its_ca(
    tmp_path: Path,
) -> None:
    # Given a certificate and its CA made elsewhere
    mine = ensure_own(tmp_path / "mine", ["127.0.0.1"])
    assert mine.ca_file is not None
    found = prepare_tls(
        settings(
            tmp_path,
            tls_cert=str(mine.cert_file),
            tls_key=str(mine.key_file),
            tls_ca=str(mine.ca_file),
        )
    )

    # Then the host serves it, pins to its CA, and makes no CA of its own
    assert found is not None
    assert found.cert_file == mine.cert_file
    assert found.fingerprint == mine.fingerprint
    assert not (tmp_path / "tls").exists()

    # And without tls_ca there is nothing to pin: clients use their trust store
    bare = prepare_tls(settings(tmp_path, tls_cert=str(mine.cert_file), tls_key=str(mine.key_file)))
    assert bare is not None and bare.fingerprint is None and bare.ca_pem is None


def test_a_certificate_that_does_not_go_with_its_key_is_refused(tmp_path: Path) -> None:
    mine = ensure_own(tmp_path / "mine", ["127.0.0.1"])
    wrong = settings(tmp_path, tls_cert=str(mine.cert_file), tls_key=str(tmp_path / "mine/ca.key"))
    with pytest.raises(SettingsError, match=r"\[network\] tls_cert/tls_key: cannot serve"):
        prepare_tls(wrong)


def test_no_tls_material_is_made_when_tls_is_off(tmp_path: Path) -> None:
    assert prepare_tls(settings(tmp_path)) is None
    assert not (tmp_path / "tls").exists()
