"""Shared by every ``hakuriver`` command: ``--config``, ``--token``, client, output, exit codes.

The plain output functions and the exit codes live in output.py (re-exported here);
the exit codes are described there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ParamSpec

from cyclopts import Parameter
from rich.console import Console, RenderableType
from rich.segment import Segment, Segments

from cli.hakuriver.client import ApiError, HakuClient, error_line
from cli.hakuriver.config import ConfigError, ca_fingerprint, host_url, load_config
from cli.hakuriver.credentials import SecretFileError, find_token
from cli.hakuriver.output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    fail,
    note,
    print_json,
    printable,
    report_bug,
    say,
    silence_stdout,
)
from control_plane.errors import EXIT_CODE, DomainError, exit_code_of_status
from control_plane.settings import SettingsError
from node_agent.settings import RunnerSettingsError

P = ParamSpec("P")

JsonFlag = Annotated[bool, Parameter(name="--json")]

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "Connection",
    "JsonFlag",
    "connection",
    "fail",
    "note",
    "output_width",
    "print_json",
    "reported",
    "say",
    "show",
]

# Lines written to a pipe or a file are not cut to a terminal's width (up to this many).
PIPE_WIDTH = 200


@Parameter(name="*")
@dataclass(frozen=True)
class Connection:
    """Where the configuration (and so the control plane) is, and the token to present."""

    config: Path | None = None
    """Configuration file (default: $HAKURIVER_CONFIG, then ~/.hakuriver/config.toml)."""

    token: str | None = None
    """API token to present (default: $HAKURIVER_TOKEN, ~/.hakuriver/token, then the first
    admin's [paths] data_dir/admin.token)."""

    def settings(self) -> dict[str, Any]:
        """The parsed configuration file ({} when the default file does not exist)."""
        return load_config(self.config)

    def client(self) -> HakuClient:
        """A client for the control plane at ``$HAKURIVER_URL`` or the configured address,
        presenting the token credentials.py finds, pinning the configured CA (if any)."""
        config = self.settings()
        return HakuClient(
            host_url(config),
            token=find_token(self.token, config),
            ca_fingerprint=ca_fingerprint(config),
        )


def connection(given: Connection | None) -> Connection:
    """The command's connection options, or the defaults when none were given."""
    return given if given is not None else Connection()


def _console() -> Console:
    # No markup: a task named "[red]x[/red]" prints as typed (renderers build styles as
    # Text, never from markup in strings).
    console = Console(highlight=False, markup=False)
    if not console.is_terminal:
        console.width = max(console.width, PIPE_WIDTH)
    return console


def output_width() -> int:
    """The width ``show`` prints to: the terminal's, or ``PIPE_WIDTH`` for a pipe or file."""
    return _console().width


def show(renderable: RenderableType) -> None:
    """Print a rich renderable to stdout; uncut and uncoloured when stdout is not a terminal.

    Every piece of text is made ``printable`` on its way out, whatever built it: the
    renderers escape the documents they are given (render.escaped, so columns line up),
    and this is the net under them, so no string from a server reaches the terminal raw.
    """
    console = _console()
    segments = [
        segment
        if segment.control or segment.text.isprintable()
        else Segment(printable(segment.text, keep_lines=True), segment.style)
        for segment in console.render(renderable, console.options)
    ]
    console.print(Segments(segments))


def reported(command: Callable[P, int]) -> Callable[P, int]:
    """Turn the errors a command can meet into one ``error:`` line and an exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            return fail(error_line(exc), exit_code_of_status(exc.status))
        except DomainError as exc:
            return fail(str(exc), EXIT_CODE[exc.kind])
        except (ConfigError, SettingsError, RunnerSettingsError, SecretFileError) as exc:
            return fail(str(exc), EXIT_USAGE)
        except TimeoutError as exc:
            return fail(str(exc))
        except KeyboardInterrupt:
            return fail("interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:
            # stdout closed early (``hakuriver task list | head``): stop quietly.
            silence_stdout()
            return EXIT_FAILED
        except Exception as exc:
            return report_bug(exc)

    return run
