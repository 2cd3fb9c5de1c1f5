"""What every ``hakuriver`` command shares: ``--config``, the client, output, exit codes.

Exit codes: 0 success, 1 a failure that is not the user's input (no control plane,
a server error, a task that did not complete), 2 bad input (an option the client
or the server refused: a 4xx answer), 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ParamSpec

from cyclopts import Parameter
from rich.console import Console, RenderableType

from cli.hakuriver.client import ApiError, HakuClient
from cli.hakuriver.config import ConfigError, host_url, load_config
from control_plane.requests import InvalidRequest
from control_plane.settings import SettingsError
from node_agent.settings import RunnerSettingsError

P = ParamSpec("P")

JsonFlag = Annotated[bool, Parameter(name="--json")]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Lines written to a pipe or a file are not cut to a terminal's width (up to this many).
PIPE_WIDTH = 200


@Parameter(name="*")
@dataclass(frozen=True)
class Connection:
    """Where the configuration (and so the control plane) is."""

    config: Path | None = None
    """Configuration file (default: $HAKURIVER_CONFIG, then ~/.hakuriver/config.toml)."""

    def settings(self) -> dict[str, Any]:
        """The parsed configuration file ({} when the default file does not exist)."""
        return load_config(self.config)

    def client(self) -> HakuClient:
        """A client for the control plane at ``$HAKURIVER_URL`` or the configured address."""
        return HakuClient(host_url(self.settings()))


def connection(given: Connection | None) -> Connection:
    """The command's connection options, or the defaults when none were given."""
    return given if given is not None else Connection()


def print_json(document: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def show(renderable: RenderableType) -> None:
    """Print a rich renderable to stdout; uncut and uncoloured when stdout is not a terminal."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, PIPE_WIDTH)
    console.print(renderable)


def say(line: str) -> None:
    """A plain line on stdout, flushed (ids are read by scripts as they appear)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def note(line: str) -> None:
    """A line for the person at the terminal, on stderr."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """Print ``error: message`` on stderr; the exit code to return."""
    note(f"error: {message}")
    return code


def reported(command: Callable[P, int]) -> Callable[P, int]:
    """Turn the errors a command can meet into one ``error:`` line and an exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            return fail(str(exc), EXIT_USAGE if exc.bad_input else EXIT_FAILED)
        except (InvalidRequest, ConfigError, SettingsError, RunnerSettingsError) as exc:
            return fail(str(exc), EXIT_USAGE)
        except TimeoutError as exc:
            return fail(str(exc))
        except KeyboardInterrupt:
            return fail("interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:
            # stdout closed early (``hakuriver task list | head``): stop quietly.
            _silence_stdout()
            return EXIT_FAILED
        except Exception as exc:
            if os.environ.get("HAKURIVER_DEBUG"):
                raise
            return fail(
                f"unexpected {type(exc).__name__}: {exc} (this is a bug; run again with"
                " HAKURIVER_DEBUG=1 for the traceback and report it)"
            )

    return run


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
