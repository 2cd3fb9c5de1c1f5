"""``hakuriver user ...``, ``token ...`` and ``whoami``: who may use the cluster, and how.

A token's secret is printed once, when it is made (the host keeps only its digest):
on stdout, alone on its line, so ``hakuriver token create > file`` captures just it;
what it is and where to keep it goes to stderr. Managing users, other users' tokens
and join tokens needs an admin's token; the host says so with a 403 (docs/cli.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from cyclopts import App, Parameter, validators

from cli.hakuriver.client import KEEP_TOKEN, ApiError, error_line
from cli.hakuriver.identity_render import stamp_us, token_table, user_table, whoami_panel
from cli.hakuriver.invocation import (
    Connection,
    JsonFlag,
    connection,
    fail,
    note,
    print_json,
    reported,
    say,
    show,
)
from control_plane.errors import InvalidRequest, exit_code_of_status

Role = Literal["user", "admin"]
Ttl = Annotated[str | None, Parameter(name="--ttl")]

user_app = App(name="user", help="Users and their roles (admin only).")
token_app = App(name="token", help="API tokens: make one, list them, revoke one.")

_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TTL = re.compile(r"([0-9]{1,9})([smhdw])")
# A token's public id inside its text (``hkr_u_<id>.<secret>``): ``token revoke`` takes either.
_TOKEN_ID = re.compile(r"hkr_[uaj]_([0-9a-f]{16})\..*", re.DOTALL)


def parse_ttl(text: str) -> int | Literal["never"]:
    """A token lifetime as typed (``30m``, ``12h``, ``90d``, ``never``) in seconds."""
    word = text.strip().lower()
    if word == "never":
        return "never"
    found = _TTL.fullmatch(word)
    if found is None or int(found[1]) == 0:
        raise InvalidRequest(
            "ttl",
            f"{text!r} is not a lifetime: a positive number and a unit (s, m, h, d, w),"
            " as 30m, 12h or 90d; or never",
        )
    return int(found[1]) * _TTL_UNITS[found[2]]


def token_id_of(text: str) -> str:
    """The id ``token revoke`` names: the id itself, or the one inside a whole token."""
    found = _TOKEN_ID.fullmatch(text.strip())
    return found[1] if found else text.strip()


def expiry(answer: dict[str, Any]) -> str:
    """``expires 2027-03-02 13:04:46Z`` or ``never expires``."""
    expires = answer.get("expires_at_us")
    return "never expires" if expires is None else f"expires {stamp_us(expires)}"


def runner_command(answer: dict[str, Any]) -> str:
    """The command that enrols a node with the join token in ``answer``."""
    words = ["hakuriver", "runner", "--join", str(answer["token"])]
    words += ["--host", str(answer.get("host_url") or "")]
    if answer.get("ca_fingerprint"):
        words += ["--ca-fingerprint", str(answer["ca_fingerprint"])]
    return " ".join(words)


def print_user_token(answer: dict[str, Any], *, holder: str | None = None) -> None:
    """The secret on stdout, once; what it is and how to keep it on stderr."""
    named = f" '{answer['name']}'" if answer.get("name") else ""
    note(f"token {answer.get('id')}{named} for {answer.get('user')}, {expiry(answer)}:")
    say(str(answer["token"]))
    who = f"give it to {holder}, who should {KEEP_TOKEN}" if holder else KEEP_TOKEN
    note(f"It will not be shown again: {who}.")


def print_join_token(answer: dict[str, Any]) -> None:
    """The runner command holding the join token on stdout, once; its terms on stderr."""
    uses = answer.get("uses_left", answer.get("uses"))
    good_for = f"good for {uses} node{'s' if uses != 1 else ''}, " if uses is not None else ""
    note(f"join token {answer.get('id')}: {good_for}{expiry(answer)}. On the new node, run:")
    say(runner_command(answer))
    note("It will not be shown again (the host keeps only its digest).")


# --- whoami ---------------------------------------------------------------------------


@reported
def whoami(*, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Show who the host takes you for: user, role, and the token presented.

    Parameters
    ----------
    as_json
        Print the API's document ``{"user", "role", "token_id", ...}``.
    """
    with connection(conn).client() as client:
        me = client.whoami()
    if as_json:
        print_json(me)
    else:
        show(whoami_panel(me))
    return 0


# --- users ------------------------------------------------------------------------------


@user_app.command
@reported
def add(
    name: str,
    /,
    *,
    role: Role = "user",
    ttl: Ttl = None,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """Add a user and make their first token, printed once.

    Parameters
    ----------
    name
        The user's name.
    role
        ``user`` (runs and sees tasks) or ``admin`` (also manages users, tokens, nodes).
    ttl
        The first token's lifetime: 30m, 12h, 90d, never (default: the host's).
    as_json
        Print ``{"user": {...}, "token": {...}}`` (the token answer holds the secret).
    """
    lifetime = parse_ttl(ttl) if ttl is not None else None
    with connection(conn).client() as client:
        user = client.add_user(name, role)
        if not as_json:
            note(f"added user {user.get('name', name)} ({user.get('role', role)})")
        try:
            answer = client.create_token(user=name, ttl_s=lifetime, name="first")
        except ApiError as exc:
            note(f"error: {error_line(exc)}")
            return fail(
                f"user {name} was added without a token: make one with"
                f" `hakuriver token create --user {name}`",
                exit_code_of_status(exc.status),
            )
    if as_json:
        print_json({"user": user, "token": answer})
    else:
        print_user_token(answer, holder=name)
    return 0


@user_app.command(name="list")
@reported
def list_users(*, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """List the users: role, whether disabled, when added and by whom.

    Parameters
    ----------
    as_json
        Print the API's document ``{"users": [...]}``.
    """
    with connection(conn).client() as client:
        users = client.users()
    if as_json:
        print_json({"users": users})
    else:
        show(user_table(users))
    return 0


@user_app.command
@reported
def disable(name: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Disable a user: every token of theirs is refused from now on.

    Parameters
    ----------
    name
        The user.
    as_json
        Print the API's document ``{"user": {...}}``.
    """
    with connection(conn).client() as client:
        user = client.disable_user(name)
    return _print_user(user, as_json, f"disabled user {name}: their tokens are refused")


@user_app.command(name="role")
@reported
def set_role(
    name: str, role: Role, /, *, as_json: JsonFlag = False, conn: Connection | None = None
) -> int:
    """Give a user another role.

    Parameters
    ----------
    name
        The user.
    role
        ``user`` or ``admin``.
    as_json
        Print the API's document ``{"user": {...}}``.
    """
    with connection(conn).client() as client:
        user = client.set_role(name, role)
    return _print_user(user, as_json, f"{name} is now {user.get('role', role)}")


def _print_user(user: dict[str, Any], as_json: bool, line: str) -> int:
    if as_json:
        print_json({"user": user})
    else:
        say(line)
    return 0


# --- tokens -----------------------------------------------------------------------------


@token_app.command
@reported
def create(
    *,
    user: str | None = None,
    ttl: Ttl = None,
    name: str | None = None,
    join: bool = False,
    uses: Annotated[int | None, Parameter(validator=validators.Number(gt=0))] = None,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """Make a token and print it, once: for you, for another user (admin), or to join a node.

    Parameters
    ----------
    user
        Whose token (an admin only, for someone else; default: yours).
    ttl
        How long it is good for: 30m, 12h, 90d, never (default: the host's).
    name
        A label shown in `token list` (as: laptop, ci).
    join
        A join token (admin): a new node exchanges it once for its own credential, with
        `hakuriver runner --join TOKEN --host URL`. Printed as that command.
    uses
        With --join: how many nodes may join with it (default: the host's, one).
    as_json
        Print the API's answer (it holds the secret ``token``).
    """
    if uses is not None and not join:
        raise InvalidRequest("uses", "only a join token (--join) has a number of uses")
    if join and user is not None:
        raise InvalidRequest("user", "a join token belongs to no user: drop --user or --join")
    lifetime = parse_ttl(ttl) if ttl is not None else None
    with connection(conn).client() as client:
        answer = client.create_token(
            user=user, kind="join" if join else "user", name=name, ttl_s=lifetime, uses=uses
        )
    if as_json:
        print_json(answer)
    elif join:
        print_join_token(answer)
    else:
        print_user_token(answer, holder=user)
    return 0


@token_app.command(name="list")
@reported
def list_tokens(
    *,
    all_users: Annotated[bool, Parameter(name="--all")] = False,
    user: str | None = None,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """List your tokens (an admin: everyone's with --all): never their secrets.

    Parameters
    ----------
    all_users
        Every user's tokens and the join and node tokens (admin).
    user
        This user's tokens (admin).
    as_json
        Print the API's document ``{"tokens": [...]}``.
    """
    with connection(conn).client() as client:
        tokens = client.tokens(all_users=all_users, user=user)
    if as_json:
        print_json({"tokens": tokens})
    elif tokens:
        show(token_table(tokens))
    else:
        note("no tokens")
    return 0


@token_app.command
@reported
def revoke(token_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Revoke a token: the host refuses it from now on.

    Parameters
    ----------
    token_id
        The token's id (as `token list` shows it), or the whole token.
    as_json
        Print the API's answer ``{"id", "revoked"}``.
    """
    ident = token_id_of(token_id)
    with connection(conn).client() as client:
        answer = client.revoke_token(ident)
    if as_json:
        print_json(answer)
    else:
        say(f"revoked token {answer.get('id', ident)}")
    return 0
