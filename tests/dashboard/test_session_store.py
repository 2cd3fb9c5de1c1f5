"""The dashboard's session store (control_plane/dashboard/sessions.py): caps against a
flood, expiry, one-time links, and a session re-checked against its token."""

from __future__ import annotations

import time

import pytest

from control_plane.access import Principal
from control_plane.dashboard import sessions as module
from control_plane.dashboard.sessions import (
    Sessions,
    csrf_matches,
    principal_of_token_id,
)
from control_plane.errors import TooMany, Unauthenticated
from projections.identity import Identity


def _principal(user: str, token: str = "t1", expires_at_us: int | None = None) -> Principal:
    return Principal(
        user=user, role="user", token_id=token, token_kind="user", expires_at_us=expires_at_us
    )


def test_a_user_holds_at_most_the_cap_and_the_oldest_goes_first() -> None:
    store = Sessions()
    secrets = [store.open(_principal("ann"), 0)[0] for _ in range(module.SESSIONS_PER_USER + 3)]
    assert store.count() == module.SESSIONS_PER_USER
    assert store.find(secrets[0]) is None and store.find(secrets[2]) is None
    assert store.find(secrets[-1]) is not None
    # Another user's sessions are not pushed out by ann's.
    bob = store.open(_principal("bob"), 0)[0]
    store.open(_principal("ann"), 0)
    assert store.find(bob) is not None


def test_past_the_total_cap_a_new_session_is_refused_not_anothers_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "SESSIONS_TOTAL", 50)
    store = Sessions()
    first = [store.open(_principal(f"u{n}"), 0)[0] for n in range(50)]
    with pytest.raises(TooMany):
        store.open(_principal("late"), 0)
    assert store.count() == 50 and all(store.find(s) is not None for s in first)


def test_one_users_links_never_push_out_anothers() -> None:
    store = Sessions()
    alice = store.link(_principal("alice", token="tok-a"))
    for _ in range(1000):
        store.link(_principal("bob", token="tok-b"))
    assert store.peek(alice) == "tok-a"  # peeking uses nothing up
    assert store.redeem(alice) == "tok-a"


def test_a_session_ends_with_its_token_expiry_or_its_ttl() -> None:
    store = Sessions(ttl_s=3600)
    now_us = int(time.time() * 1e6)
    secret, _ = store.open(_principal("cy", expires_at_us=now_us), now_us)
    assert store.find(secret) is None  # the token expired: so did the session
    short = Sessions(ttl_s=0)
    secret, _ = short.open(_principal("cy"), now_us)
    assert short.find(secret) is None
    assert store.find(None) is None and store.find("") is None and store.find("hks_x") is None


def test_logout_ends_only_that_session() -> None:
    store = Sessions()
    one, _ = store.open(_principal("di"), 0)
    two, _ = store.open(_principal("di"), 0)
    assert store.close(one) and not store.close(one) and not store.close(None)
    assert store.find(one) is None and store.find(two) is not None


def test_a_login_code_is_redeemed_once_and_not_after_its_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = Sessions()
    code = store.link(_principal("ed", token="tok-ed"))
    assert store.redeem(code) == "tok-ed"
    assert store.redeem(code) is None
    monkeypatch.setattr(module, "LINK_TTL_S", -1.0)
    late = store.link(_principal("ed", token="tok-ed"))
    assert store.redeem(late) is None
    assert store.redeem("made-up") is None


def test_the_csrf_secret_must_match_exactly() -> None:
    store = Sessions()
    _, session = store.open(_principal("fa"), 0)
    assert csrf_matches(session, session.csrf)
    for wrong in (None, "", session.csrf[:-1], session.csrf + "x", "x" * len(session.csrf)):
        assert not csrf_matches(session, wrong)


def test_a_session_whose_token_is_unknown_is_refused() -> None:
    store = Sessions()
    _, session = store.open(_principal("gu", token="gone"), 0)
    with pytest.raises(Unauthenticated) as refused:
        principal_of_token_id(Identity(), session.token_id, 0)
    assert refused.value.field == "session"


@pytest.mark.parametrize(
    ("origin", "scheme", "host", "same"),
    [
        (None, "http", "127.0.0.1:8000", True),
        ("http://127.0.0.1:8000", "http", "127.0.0.1:8000", True),
        ("http://127.0.0.1:8000", "ws", "127.0.0.1:8000", True),
        ("https://Cluster.Lab:8443", "https", "cluster.lab:8443", True),
        ("https://cluster.lab", "https", "cluster.lab:443", True),
        ("http://[::1]:8000", "http", "[::1]:8000", True),
        ("https://127.0.0.1:8000", "http", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8001", "http", "127.0.0.1:8000", False),
        ("http://evil.example", "http", "127.0.0.1:8000", False),
        ("null", "http", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000", "http", None, False),
    ],
)
def test_same_origin(origin: str | None, scheme: str, host: str | None, same: bool) -> None:
    assert module.same_origin(origin, scheme, host) is same
