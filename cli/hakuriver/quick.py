"""``hakuriver task submit`` without the CLI framework: the common forms, read from a table.

Importing cyclopts and rich takes about three times as long as starting the
interpreter, so a shell loop of submits would spend most of its time there. This
path reads ``task submit``'s words with the table below, builds the request with
the same function as the full command (submit_request.py), sends it, and prints
what the full command prints.

It answers None ("not mine") for anything it does not fully understand: help,
``--wait`` / ``--follow``, an unknown or repeated option, a flag given a value, an
option value that starts with a dash, or an option value the client refuses. The
full command then reads the same words and says what is wrong, in its words. The
decision is always taken before anything is sent, so a task is never submitted
twice. tests/cli/test_quick_submit.py checks that the table and the full command
agree on every option.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Option -> (keyword, what it takes): "value", "list" (repeatable), or the flag's value.
OPTIONS: dict[str, tuple[str, str | bool]] = {
    "--target": ("target", "list"),
    "--cores": ("cores", "value"),
    "--memory": ("memory", "value"),
    "--env": ("env", "list"),
    "--container": ("container", "value"),
    "--mount": ("mount", "list"),
    "--privileged": ("privileged", True),
    "--no-privileged": ("privileged", False),
    "--owner": ("owner", "value"),
    "--name": ("name", "value"),
    "--json": ("as_json", True),
    "--config": ("config", "value"),
    "--token": ("token", "value"),
}
# task submit's options that the quick path leaves to the full command.
WAIT_OPTIONS: dict[str, tuple[str, str | bool]] = {
    "--wait": ("wait", True),
    "--follow": ("follow", True),
    "--poll-interval": ("poll_interval", "value"),
}
# Values that may be negative numbers (refused as values, not taken for options).
SIGNED = frozenset({"cores", "memory"})


class Words:
    """``task submit``'s words as the quick path reads them."""

    def __init__(self) -> None:
        self.command: list[str] = []
        self.fields: dict[str, Any] = {}
        self.as_json = False
        self.config: str | None = None
        self.token: str | None = None


def read_words(tokens: Sequence[str]) -> Words | None:
    """The command and option values in ``tokens``; None for anything unusual."""
    words = Words()
    seen: set[str] = set()
    rest = list(tokens)
    while rest:
        token = rest.pop(0)
        if token == "--":
            words.command += rest
            break
        if not token.startswith("-"):
            words.command.append(token)
            continue
        option, equals, inline = token.partition("=")
        if option not in OPTIONS:
            return None
        keyword, takes = OPTIONS[option]
        if isinstance(takes, bool):
            if equals or keyword in seen:
                return None
            value: Any = takes
        else:
            if equals:
                value = inline
            elif rest and rest[0] != "--":
                value = rest.pop(0)
            else:
                return None
            if value.startswith("-") and not (keyword in SIGNED and value[1:2].isdigit()):
                return None
            if takes == "list":
                words.fields.setdefault(keyword, []).append(value)
                continue
            if keyword in seen:
                return None
        seen.add(keyword)
        if keyword == "as_json":
            words.as_json = value
        elif keyword == "config":
            if not value:
                return None  # cyclopts reads '' as the path '.'
            words.config = value
        elif keyword == "token":
            words.token = value
        else:
            words.fields[keyword] = value
    return words


def split_at_command(tokens: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """``task submit``'s words cut where the command starts, for words without ``--``.

    None when there is a ``--``, or an unknown option comes before any command word.
    """
    known = {**OPTIONS, **WAIT_OPTIONS}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "--":
            return None
        if not token.startswith("-"):
            return list(tokens[:index]), list(tokens[index:])
        option, equals, _ = token.partition("=")
        if option not in known:
            return None
        takes = known[option][1]
        index += 2 if takes in ("value", "list") and not equals else 1
    return None


def quick_submit(tokens: Sequence[str]) -> int | None:
    """Submit as ``hakuriver task submit TOKENS`` would; None: let the full command do it."""
    from cli.hakuriver.client import ApiError, HakuClient, error_line
    from cli.hakuriver.config import ConfigError, ca_fingerprint, host_url, load_config
    from cli.hakuriver.credentials import SecretFileError, find_token
    from cli.hakuriver.output import (
        EXIT_FAILED,
        EXIT_INTERRUPTED,
        fail,
        report_bug,
        silence_stdout,
    )
    from cli.hakuriver.submit_request import build_request, print_submitted
    from control_plane.errors import InvalidRequest

    words = read_words(tokens)
    if words is None:
        return None
    try:
        request = build_request(words.command, **words.fields)
        config = load_config(Path(words.config) if words.config else None)
        url, pin = host_url(config), ca_fingerprint(config)
        token = find_token(words.token, config)
    except (InvalidRequest, ConfigError, OSError, ValueError, SecretFileError):
        return None  # the full command explains it
    # Sent from here on: every outcome is answered here, as commands' `reported` does.
    try:
        with HakuClient(url, token=token, ca_fingerprint=pin) as client:
            answer = client.submit(request)
        print_submitted(answer, as_json=words.as_json)
        return 0
    except ApiError as exc:
        from control_plane.errors import exit_code_of_status

        return fail(error_line(exc), exit_code_of_status(exc.status))
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        silence_stdout()
        return EXIT_FAILED
    except Exception as exc:
        return report_bug(exc)
