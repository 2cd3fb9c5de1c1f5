"""A host with ``[network] tls = true``: HTTPS and WSS, trusted by the pinned CA fingerprint.

One real host process serves every test here (a module fixture: starting one is the slow
part); the checks use only what needs no credential (``/api/health``, ``/api/tls/ca``)
or happen at the TLS level (a refused handshake, a pin that does not match).
"""

from __future__ import annotations

import contextlib
import http.server
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.cluster import REPO, Cluster, free_port

from cli.hakuriver.client import HakuClient, Untrusted
from control_plane.tls import ensure_own
from events.pinning import PinMismatch, fingerprint_of_pem
from node_agent.settings import RunnerSettings
from node_agent.transport import Connector, websocket_connector

pytestmark = pytest.mark.timeout(60)

WRONG_PIN = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = Cluster(tmp_path_factory.mktemp("tls"), tls=True)
    try:
        started.start_host()
        yield started
    finally:
        started.close()


def test_the_host_makes_a_private_ca_prints_its_fingerprint_and_serves_https(
    cluster: Cluster,
) -> None:
    # Given a host started with tls = true on an empty data directory
    folder = cluster.root / "tls"
    fingerprint = cluster.fingerprint
    assert fingerprint is not None and fingerprint.startswith("sha256:")

    # Then its keys are for its user alone, and it says the fingerprint clients pin
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600, key
    assert f'ca_fingerprint = "{fingerprint}"' in cluster.logs("host")
    assert f"at {cluster.url} " in cluster.logs("host")

    # And it serves its CA in the clear of any credential, the very certificate pinned
    served = cluster.http.get("/api/tls/ca")
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/x-pem-file"
    assert fingerprint_of_pem(served.text) == fingerprint

    # And a plain-http request to it gets no answer
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{cluster.port}/api/health", timeout=5)


def test_a_client_pinned_to_the_right_fingerprint_talks_https(
    cluster: Cluster, tmp_path: Path
) -> None:
    # When the CLI's client pins the fingerprint the host printed
    with HakuClient(
        cluster.url,
        token=cluster.admin_token,
        ca_fingerprint=cluster.fingerprint,
        ca_cache=tmp_path,
    ) as client:
        health = client.health()

    # Then it is answered, and keeps the checked CA for the next time
    assert isinstance(health, dict)
    assert fingerprint_of_pem((tmp_path / f"{cluster.fingerprint_hex}.pem").read_text()) == (
        cluster.fingerprint
    )


def test_a_client_pinned_to_the_wrong_fingerprint_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    # When a client pins a CA that is not the host's
    with (
        HakuClient(cluster.url, ca_fingerprint=WRONG_PIN, ca_cache=tmp_path) as client,
        pytest.raises(Untrusted) as refused,
    ):
        client.health()

    # Then it refuses, naming both fingerprints, and caches nothing
    message = str(refused.value)
    assert f"the host's certificate authority {cluster.fingerprint}" in message
    assert f"does not match the pinned {WRONG_PIN}: refusing" in message
    assert list(tmp_path.iterdir()) == []


def test_the_cli_pins_the_fingerprint_from_its_environment(
    cluster: Cluster, tmp_path: Path
) -> None:
    def hakuriver(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.hakuriver", *args],
            env={**cluster.env(), "HOME": str(tmp_path), **env},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )

    # With the host's fingerprint (Cluster.env): answered, and the CA kept in ~/.hakuriver/ca
    listed = hakuriver("node", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert (tmp_path / ".hakuriver" / "ca" / f"{cluster.fingerprint_hex}.pem").exists()

    # With another: one line saying why, and the exit code of a host it cannot use
    refused = hakuriver("node", "list", HAKURIVER_CA_FINGERPRINT=WRONG_PIN)
    assert refused.returncode == 1
    assert f"does not match the pinned {WRONG_PIN}: refusing" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_client_with_no_pin_does_not_trust_the_private_ca(cluster: Cluster) -> None:
    # An https:// URL and no pin: the system's trust store, which knows no such CA
    with HakuClient(cluster.url, ca_cache=None) as client, pytest.raises(Untrusted) as refused:
        client.health()
    assert "not trusted by this machine" in str(refused.value)
    assert "ca_fingerprint" in str(refused.value)


def test_a_man_in_the_middle_serving_the_genuine_ca_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a server with a certificate of another CA, that answers /api/tls/ca with the
    # genuine host's CA certificate (public, so anyone can copy it)
    genuine = cluster.ca_file.read_text()
    impostor = ensure_own(tmp_path / "impostor", ["127.0.0.1"])
    assert impostor.fingerprint != cluster.fingerprint
    # When a client pinned to the genuine CA connects to it
    with (
        _https_server(impostor.server_context(), genuine) as (url, asked),
        HakuClient(url, ca_fingerprint=cluster.fingerprint, ca_cache=None) as client,
        pytest.raises(Untrusted) as refused,
    ):
        client.health()

    # Then the CA it fetched matched the pin, but the server's chain does not lead to it
    assert asked == ["/api/tls/ca"]
    message = str(refused.value)
    assert f"not signed by the pinned certificate authority {cluster.fingerprint}" in message


def test_an_agent_links_over_wss_with_the_pin(cluster: Cluster) -> None:
    # Given the host's fingerprint in the agent's environment (Cluster.env)
    cluster.start_agent("good")

    # Then it is online over wss, and kept the CA it checked in its state dir
    assert "wss://127.0.0.1" in cluster.logs("agent-good")
    ca = cluster.root / "runner-good" / "ca" / f"{cluster.fingerprint_hex}.pem"
    assert fingerprint_of_pem(ca.read_text()) == cluster.fingerprint
    cluster.stop_agent("good")


async def test_the_agents_link_refuses_a_wrong_pin_and_a_man_in_the_middle(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given an agent's settings pinning a CA that is not the host's
    def link(url: str, pin: str) -> Connector:
        settings = RunnerSettings.from_mapping(
            {}, data_dir=str(tmp_path), name="n", host_url=url, ca_fingerprint=pin
        )
        trust = settings.pinned_trust()
        assert trust is not None and settings.ws_url.startswith("wss://")
        return websocket_connector(settings.ws_url, ssl=trust.context)

    # When its link connects, then it refuses the host
    with pytest.raises(PinMismatch, match=f"does not match the pinned {WRONG_PIN}"):
        async with link(cluster.url, WRONG_PIN)():
            pass

    # And pinned right, it refuses a server whose chain is another CA's
    impostor = ensure_own(tmp_path / "impostor", ["127.0.0.1"])
    genuine = cluster.ca_file.read_text()
    with (
        _https_server(impostor.server_context(), genuine) as (url, asked),
        pytest.raises(ssl.SSLCertVerificationError) as refused,
    ):
        async with link(url, cluster.fingerprint or "")():
            pass
    assert asked == ["/api/tls/ca"]
    assert not isinstance(refused.value, PinMismatch)


@contextlib.contextmanager
def _https_server(context: object, ca_pem: str) -> Iterator[tuple[str, list[str]]]:
    """A stand-in host on loopback: its own certificate, the given CA at /api/tls/ca."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = ca_pem.encode() if self.path == "/api/tls/ca" else b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
