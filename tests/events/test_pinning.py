"""Pins as clients take them: fingerprints as people paste them, and the CA cache."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cli.hakuriver.config import ConfigError, ca_fingerprint, host_url
from control_plane.tls import ensure_own
from events.pinning import BadFingerprint, PinnedTrust, parse_fingerprint
from node_agent.settings import RunnerSettings, RunnerSettingsError

HEX = "ab" * 32


@pytest.mark.parametrize(
    "text",
    [
        f"sha256:{HEX}",
        HEX,
        HEX.upper(),
        f"SHA256:{HEX.upper()}",
        ":".join([HEX[i : i + 2] for i in range(0, 64, 2)]),
    ],
)
def test_a_fingerprint_is_taken_as_people_paste_it(text: str) -> None:
    assert parse_fingerprint(f"  {text}\n") == f"sha256:{HEX}"


@pytest.mark.parametrize("text", ["", "sha256:", "sha256:" + "ab" * 31, "md5:" + HEX, HEX + "g"])
def test_anything_else_is_refused_saying_what_is_expected(text: str) -> None:
    with pytest.raises(BadFingerprint, match="64 hex digits"):
        parse_fingerprint(text)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_cached_ca_is_used_only_when_it_still_has_the_pinned_fingerprint(tmp_path: Path) -> None:
    # Given the pinned CA in the cache, and nothing listening where the host should be
    ca = ensure_own(tmp_path / "ca", ["127.0.0.1"])
    assert ca.fingerprint is not None and ca.ca_pem is not None
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / f"{ca.fingerprint.removeprefix('sha256:')}.pem"
    cached.write_text(ca.ca_pem)

    # Then the context comes from the cache without asking the host
    assert PinnedTrust("127.0.0.1", closed_port(), ca.fingerprint, cache_dir=cache).context()

    # But a cache file that was changed is not trusted: the host is asked again
    other = ensure_own(tmp_path / "other", ["127.0.0.1"])
    assert other.ca_pem is not None
    cached.write_text(other.ca_pem)
    with pytest.raises(ConnectionRefusedError):
        PinnedTrust("127.0.0.1", closed_port(), ca.fingerprint, cache_dir=cache).context()


def test_the_client_config_speaks_https_when_the_host_does_or_a_ca_is_pinned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HAKURIVER_URL", raising=False)
    monkeypatch.delenv("HAKURIVER_CA_FINGERPRINT", raising=False)
    assert host_url({}) == "http://127.0.0.1:8000"
    assert host_url({"network": {"host_bind_ip": "0.0.0.0"}}) == "https://127.0.0.1:8000"
    pinned = {"network": {"host_reachable_address": "10.0.0.1", "ca_fingerprint": HEX}}
    assert host_url(pinned) == "https://10.0.0.1:8000"
    assert ca_fingerprint(pinned) == f"sha256:{HEX}"
    assert host_url({"network": {"ca_fingerprint": HEX, "tls": False}}) == "http://127.0.0.1:8000"

    # The environment wins over the file, and a bad value names where it came from
    monkeypatch.setenv("HAKURIVER_CA_FINGERPRINT", "nope")
    with pytest.raises(ConfigError, match=r"\$HAKURIVER_CA_FINGERPRINT"):
        ca_fingerprint(pinned)
    monkeypatch.delenv("HAKURIVER_CA_FINGERPRINT")
    with pytest.raises(ConfigError, match=r"\[network\] ca_fingerprint"):
        ca_fingerprint({"network": {"ca_fingerprint": "nope"}})


def test_the_runner_links_over_wss_with_its_pin(tmp_path: Path) -> None:
    network = {"host_reachable_address": "10.0.0.1", "ca_fingerprint": HEX.upper()}
    runner = RunnerSettings.from_mapping({"network": network}, data_dir=str(tmp_path), name="n1")
    assert runner.ws_url == "wss://10.0.0.1:8000/api/agents/ws"
    trust = runner.pinned_trust()
    assert trust is not None
    assert trust.fingerprint == f"sha256:{HEX}"
    assert trust.cache_dir == runner.state_dir / "ca"

    # Plain http (an explicit URL) uses no pin; a bad pin is refused naming the key
    plain = RunnerSettings.from_mapping(
        {"network": network}, data_dir=str(tmp_path), name="n1", host_url="http://h:1"
    )
    assert plain.ws_url == "ws://h:1/api/agents/ws" and plain.pinned_trust() is None
    with pytest.raises(RunnerSettingsError, match=r"\[network\] ca_fingerprint"):
        RunnerSettings.from_mapping({"network": {"ca_fingerprint": "x"}}, data_dir=str(tmp_path))
