"""One error model: what went wrong with a request, where, and what it maps to.

Every refusal the control plane makes is a ``DomainError`` with a *kind* and a
*field* (where in the request the fault is; ``""`` when it is nowhere in particular):

=============  ====  ==========  ============================================
kind           HTTP  CLI exit    meaning
=============  ====  ==========  ============================================
invalid         400  2           the request itself is wrong (a value, a name)
not_found       404  2           it names something that does not exist
conflict        409  2           it makes no sense in the current state
unauthenticated 401  2           no valid credential (missing, bad, expired, revoked)
refused         403  2           a policy forbids it (the message names what is needed)
too_large       413  2           a part of the request is larger than this host takes
too_many        429  1           a limit on what one client may hold at once (try later)
unavailable     503  1           the control plane cannot do it right now
store_failing   503  1           the event log cannot be written (a full disk):
                                 most likely nothing was recorded (rarely a write
                                 whose outcome was unknown is adopted later): look
                                 before sending again once the operator freed space
=============  ====  ==========  ============================================

The host answers ``{"error": CODE, "field": F, "message": M}`` with ``HTTP_STATUS``
and ``ERROR_CODE`` of the kind (control_plane/app.py, one handler); the CLI turns
an answer's status back into an exit code with ``EXIT_CODE``. Only the standard
library here: the CLI's quick submit path imports it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Kind = Literal[
    "invalid",
    "not_found",
    "conflict",
    "unauthenticated",
    "refused",
    "too_large",
    "too_many",
    "unavailable",
    "store_failing",
]

HTTP_STATUS: dict[str, int] = {
    "invalid": 400,
    "not_found": 404,
    "conflict": 409,
    "unauthenticated": 401,
    "refused": 403,
    "too_large": 413,
    "too_many": 429,
    "unavailable": 503,
    "store_failing": 503,
}
# The ``error`` member of the API's error document (stable: clients match on it).
ERROR_CODE: dict[str, str] = {
    "invalid": "invalid_request",
    "not_found": "not_found",
    "conflict": "conflict",
    "unauthenticated": "unauthenticated",
    "refused": "forbidden",
    "too_large": "too_large",
    "too_many": "too_many_requests",
    "unavailable": "unavailable",
    "store_failing": "store_unavailable",
}
# Exit codes of the CLI: 2 when the request as typed cannot work (change it), 1 when the
# control plane could not serve it now (try again).
EXIT_CODE: dict[str, int] = {
    "invalid": 2,
    "not_found": 2,
    "conflict": 2,
    "unauthenticated": 2,
    "refused": 2,
    "too_large": 2,
    "too_many": 1,
    "unavailable": 1,
    "store_failing": 1,
}
# A 503 reads back as ``unavailable``: ``store_failing`` is a finer reason for the same status.
_KIND_OF_STATUS = {status: kind for kind, status in HTTP_STATUS.items() if kind != "store_failing"}


class DomainError(Exception):
    """A refusal: ``kind`` says what sort, ``field`` where, the message why."""

    kind: ClassVar[Kind] = "invalid"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status of this kind of refusal."""
        return HTTP_STATUS[self.kind]


class InvalidRequest(DomainError, ValueError):
    """The request itself is wrong; ``field`` says where."""

    kind: ClassVar[Kind] = "invalid"


class NotFound(DomainError, LookupError):
    """A named thing does not exist."""

    kind: ClassVar[Kind] = "not_found"


class Conflict(DomainError):
    """The action makes no sense in the current state."""

    kind: ClassVar[Kind] = "conflict"


class Unauthenticated(DomainError):
    """No valid credential came with the request."""

    kind: ClassVar[Kind] = "unauthenticated"


class Refused(DomainError):
    """A policy of this host forbids it."""

    kind: ClassVar[Kind] = "refused"


class TooLarge(DomainError):
    """A part of the request (a job's workdir) is larger than this host takes (413)."""

    kind: ClassVar[Kind] = "too_large"


class TooMany(DomainError):
    """A client holds as much of something as it may at once (429)."""

    kind: ClassVar[Kind] = "too_many"


class Unavailable(DomainError):
    """The control plane cannot do it now (starting, stopping, an engine away)."""

    kind: ClassVar[Kind] = "unavailable"


class StoreFailing(Unavailable):
    """The event log cannot be written now (a full disk, an I/O error): nothing was
    recorded; the message says why. The host writes again once the storage takes it."""

    kind: ClassVar[Kind] = "store_failing"


_BY_KIND: dict[str, type[DomainError]] = {
    cls.kind: cls
    for cls in (
        InvalidRequest,
        NotFound,
        Conflict,
        Unauthenticated,
        Refused,
        TooLarge,
        TooMany,
        Unavailable,
        StoreFailing,
    )
}


def error_of_kind(kind: str, field: str, message: str) -> DomainError:
    """A ``DomainError`` of the named kind (``invalid`` for a kind this build does not know)."""
    return _BY_KIND.get(kind, InvalidRequest)(field, message)


def kind_of_status(status: int) -> Kind:
    """The kind an HTTP error status stands for (4xx: invalid, 5xx: unavailable, otherwise)."""
    found = _KIND_OF_STATUS.get(status)
    if found is not None:
        return found  # type: ignore[return-value]
    return "unavailable" if status >= 500 or status == 0 else "invalid"


def exit_code_of_status(status: int) -> int:
    """The CLI's exit code for an error answer with this HTTP status."""
    return EXIT_CODE[kind_of_status(status)]
