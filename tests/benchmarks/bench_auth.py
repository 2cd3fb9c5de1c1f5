"""What authentication costs a request, as a share of the request itself.

Prints one ``name value`` line per figure:

- ``auth_check_us``: one token check and authorization, the exact functions the host's
  request middleware runs (``access.authenticate`` then ``access.require``), against an
  identity of 200 users and 2000 tokens (median of many calls, in this process);
- ``submit_request_ms``: one authenticated ``POST /api/tasks`` answered by a real host
  process over a kept-alive loopback connection (median of 300; the client's view, so
  it includes the loopback round trip: the share below is, if anything, understated);
- ``auth_check_share``: the first over the second (the issue's goal: at most 2%);
- ``unauthenticated_refusal_ms``: a request without a token, answered 401 (the floor of
  the server's per-request work, for the same run).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.cluster import Cluster

from control_plane.access import authenticate, require
from events.credentials import make_token, secret_digest
from events.envelope import new_event, now_us
from events.types import TokenIssued, UserCreated
from projections.cluster import ClusterState


def report(name: str, value: float) -> None:
    """Print one figure."""
    print(f"{name} {value:.6g}", flush=True)


def _identity_with(users: int, tokens: int) -> tuple[ClusterState, str]:
    state = ClusterState()
    records = []
    from events.envelope import Recorded

    def record(event: object) -> None:
        new = new_event(event, source="host")  # type: ignore[arg-type]
        records.append(
            Recorded(
                seq=len(records) + 1,
                id=new.id,
                kind=new.kind,
                stream=new.stream,
                source=new.source,
                occurred_at_us=new.occurred_at_us,
                recorded_at_us=new.occurred_at_us,
                schema_version=1,
                hash=b"",
                event=new.event,
            )
        )

    for i in range(users):
        record(UserCreated(name=f"user{i}"))
    made = ""
    for i in range(tokens):
        token = make_token("user")
        record(
            TokenIssued(
                token_id=token.id,
                user=f"user{i % users}",
                token_kind="user",
                sha256=secret_digest(token.text.split(".", 1)[1]),
            )
        )
        made = token.text
    state.apply_all(records)
    return state, made


def bench_check() -> float:
    state, token = _identity_with(200, 2000)
    header = f"Bearer {token}"
    identity = state.identity
    samples = []
    for _ in range(50):
        start = time.perf_counter()
        for _ in range(200):
            principal = authenticate(identity, header, now_us())
            require(principal, "user")
        samples.append((time.perf_counter() - start) / 200)
    value = statistics.median(samples) * 1e6
    report("auth_check_us", value)
    return value


def bench_requests(root: Path) -> tuple[float, float]:
    cluster = Cluster(root, heartbeat_interval=1.0, heartbeat_timeout=5.0)
    try:
        cluster.start_host()
        http = cluster.http
        body = {"command": "true", "container": "NULL"}  # queued: no node, no run
        for _ in range(30):
            assert http.post("/api/tasks", json=body).status_code == 201
        submit = []
        for _ in range(300):
            start = time.perf_counter()
            r = http.post("/api/tasks", json=body)
            submit.append(time.perf_counter() - start)
            assert r.status_code == 201, r.text
        with cluster.client_as(None) as anonymous:
            refused = []
            for _ in range(300):
                start = time.perf_counter()
                r = anonymous.post("/api/tasks", json=body)
                refused.append(time.perf_counter() - start)
                assert r.status_code == 401
        submit_ms = statistics.median(submit) * 1e3
        report("submit_request_ms", submit_ms)
        report("unauthenticated_refusal_ms", statistics.median(refused) * 1e3)
        return submit_ms, statistics.median(refused) * 1e3
    finally:
        cluster.close()


def main() -> None:
    check_us = bench_check()
    with tempfile.TemporaryDirectory() as tmp:
        submit_ms, _ = bench_requests(Path(tmp))
    report("auth_check_share", check_us / (submit_ms * 1e3))


if __name__ == "__main__":
    main()
