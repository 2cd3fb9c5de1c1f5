"""The one error model: each kind has one HTTP status, one API code and one CLI exit code."""

from __future__ import annotations

from typing import get_args

import pytest

from control_plane.errors import (
    ERROR_CODE,
    EXIT_CODE,
    HTTP_STATUS,
    Conflict,
    DomainError,
    InvalidRequest,
    Kind,
    NotFound,
    Refused,
    StoreFailing,
    Unavailable,
    error_of_kind,
    exit_code_of_status,
    kind_of_status,
)


def test_every_kind_is_mapped_once_everywhere() -> None:
    kinds = set(get_args(Kind))
    assert set(HTTP_STATUS) == set(ERROR_CODE) == set(EXIT_CODE) == kinds
    assert len(set(ERROR_CODE.values())) == len(kinds)  # one API code per kind
    # One status per kind, and back; ``store_failing`` is a finer 503 that reads back as
    # ``unavailable`` (same exit code: try again later).
    assert len(set(HTTP_STATUS.values())) == len(kinds) - 1
    for kind, status in HTTP_STATUS.items():
        assert kind_of_status(status) == ("unavailable" if kind == "store_failing" else kind)
        assert error_of_kind(kind, "f", "m").status == status
        assert error_of_kind(kind, "f", "m").kind == kind


@pytest.mark.parametrize(
    ("error", "status", "exit_code"),
    [
        (InvalidRequest("memory", "negative"), 400, 2),
        (NotFound("task_id", "no task 7"), 404, 2),
        (Conflict("task_id", "already killed"), 409, 2),
        (Refused("privileged", "not allowed here"), 403, 2),
        (Unavailable("docker", "no engine"), 503, 1),
        (StoreFailing("", "the event log cannot be written: no space left on device"), 503, 1),
    ],
)
def test_a_refusal_names_its_field_and_maps_to_one_status_and_exit_code(
    error: DomainError, status: int, exit_code: int
) -> None:
    assert str(error).startswith(f"{error.field}: " if error.field else error.message)
    assert error.status == status
    assert exit_code_of_status(status) == exit_code == EXIT_CODE[error.kind]


def test_statuses_outside_the_model_still_get_a_sensible_exit_code() -> None:
    assert exit_code_of_status(413) == 2  # a body too large: change the request
    assert exit_code_of_status(500) == 1  # a bug on the host: nothing to change here
    assert exit_code_of_status(0) == 1  # no answer at all
