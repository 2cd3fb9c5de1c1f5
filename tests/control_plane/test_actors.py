"""The actor rule: who a request says it comes from (control_plane/actors.py)."""

from __future__ import annotations

import pytest

from control_plane.actors import ACTOR_HEADER, actor_from, actor_header_value
from control_plane.errors import InvalidRequest


@pytest.mark.parametrize(
    ("header", "body", "actor"),
    [
        ("alice", None, "alice"),
        ("alice", "carol", "alice"),  # the client's name for itself wins over the body
        (None, "carol", "carol"),  # API clients written before the header
        (None, None, "anonymous"),
        ("  ", "  ", "anonymous"),
        ("", None, "anonymous"),
        (actor_header_value("zoë d'Arc"), None, "zoë d'Arc"),
    ],
)
def test_the_header_then_the_body_then_anonymous(
    header: str | None, body: str | None, actor: str
) -> None:
    assert actor_from(header, body) == actor


@pytest.mark.parametrize(
    ("header", "body", "field"),
    [
        ("a%0Ab", None, ACTOR_HEADER),  # a newline: not a name
        ("%FF", None, ACTOR_HEADER),  # not UTF-8
        ("x" * 129, None, ACTOR_HEADER),
        (None, "tab\there", "requested_by"),
    ],
)
def test_a_name_that_is_not_one_is_refused_naming_where(
    header: str | None, body: str | None, field: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        actor_from(header, body)
    assert refused.value.field == field


def test_the_cli_names_itself_in_the_header_the_host_reads() -> None:
    """The CLI spells the header itself (a submit must not import the control plane)."""
    from cli.hakuriver import client

    assert client.ACTOR_HEADER == ACTOR_HEADER
    [(name, value)] = client.actor_headers("zoë").items()
    assert actor_from(value) == "zoë" and name == ACTOR_HEADER
