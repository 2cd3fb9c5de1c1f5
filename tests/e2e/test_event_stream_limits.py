"""``GET /api/events/stream`` bounds what one client holds (issue 14, item 5).

Thousands of streams opened by one client starved the agents' links. A client (its address
and user) now holds a few at most (429 past them), and a subscriber that stops reading is
dropped after ``event_stream_stall_s`` instead of being buffered for.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import Cluster

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("event-streams")]


@contextlib.contextmanager
def limited(root: Path, per_client: int, stall_s: float) -> Iterator[Cluster]:
    """A host (no agents) with these stream limits in its ``[network]`` section."""
    cluster = Cluster(root, heartbeat_timeout=5.0)
    text = cluster.config.read_text().replace(
        "[network]\n",
        f"[network]\nevent_streams_per_client = {per_client}\nevent_stream_stall_s = {stall_s}\n",
        1,
    )
    cluster.config.write_text(text)
    try:
        cluster.start_host()
        yield cluster
    finally:
        cluster.close()


def _first_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        assert chunk, "the host closed the connection"
        line += chunk
    return line


def _raw_stream(cluster: Cluster, token: str) -> tuple[socket.socket, int]:
    """A stream opened by hand that reads nothing after its status line."""
    sock = socket.create_connection(("127.0.0.1", cluster.port), timeout=30)
    sock.sendall(
        b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock, int(_first_line(sock).split()[1])


def test_a_client_holds_a_few_streams_and_more_are_refused(tmp_path: Path) -> None:
    with limited(tmp_path, per_client=2, stall_s=30) as cluster:
        _a_client_holds_a_few(cluster)


def _a_client_holds_a_few(cluster: Cluster) -> None:
    assert cluster.admin_token is not None
    other_admin = cluster.add_user("ops", role="admin")
    held = [_raw_stream(cluster, cluster.admin_token) for _ in range(2)]
    try:
        assert [status for _, status in held] == [200, 200]
        # One more from the same client is refused, saying why
        refused = cluster.http.get("/api/events/stream")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "too_many_requests"
        assert "event streams open" in refused.json()["message"]
        # Another user's streams are their own share
        sock, status = _raw_stream(cluster, other_admin)
        sock.close()
        assert status == 200
    finally:
        for sock, _ in held:
            sock.close()
    # Closing one gives its slot back
    cluster.wait(
        lambda: _status_of_one_more(cluster) == 200, 20, "a closed stream's slot to come back"
    )


def _dropped(cluster: Cluster) -> bool:
    log = (cluster.root / "host.log").read_text(errors="replace")
    return "dropped an event stream subscriber" in log


def _status_of_one_more(cluster: Cluster) -> int:
    assert cluster.admin_token is not None
    sock, status = _raw_stream(cluster, cluster.admin_token)
    sock.close()
    return status


def test_a_subscriber_that_stops_reading_is_dropped_not_buffered_for(tmp_path: Path) -> None:
    with limited(tmp_path, per_client=1, stall_s=1) as cluster:
        _a_stalled_subscriber_is_dropped(cluster)


def _a_stalled_subscriber_is_dropped(cluster: Cluster) -> None:
    assert cluster.admin_token is not None
    # Given a subscriber that reads nothing after its status line, and the only slot
    sock, status = _raw_stream(cluster, cluster.admin_token)
    assert status == 200
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        # When the log grows by far more than the sockets' buffers hold (tasks that wait:
        # no node), each with 900 kB of environment
        env = {"PAD": "x" * 900_000}
        for _ in range(30):
            cluster.submit("true", env=env, cores=0)
            if _dropped(cluster):
                break
        # Then the host drops it, and its slot is free again
        cluster.wait(
            lambda: _dropped(cluster),
            30,
            "the host to drop the stalled subscriber",
        )
        cluster.wait(lambda: _status_of_one_more(cluster) == 200, 20, "the slot to come back")
    finally:
        sock.close()
