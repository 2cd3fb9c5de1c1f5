"""The seeds' command spellings (``hakuriver.task``, ``hakuriver.client``, ...).

Each entry point rewrites its words into the ``hakuriver`` command they mean and
runs that, so there is one parser and one implementation per command:

    hakuriver.host [--config F]              hakuriver host [--config F]
    hakuriver.runner [--name N]              hakuriver runner [--name N]
    hakuriver.init config                    hakuriver init config
    hakuriver.init service --host|--runner   hakuriver init service --host|--runner
    hakuriver.task command ID pause          hakuriver task pause ID
    hakuriver.task submit|status|list|...    hakuriver task submit|status|list|...
    hakuriver.client --status ID             hakuriver task status ID
    hakuriver.client --kill ID               hakuriver task kill ID
    hakuriver.client --list-nodes | nodes    hakuriver node list
    hakuriver.client --health [NODE]         hakuriver node health [NODE]
    hakuriver.client [OPTIONS] -- CMD ...    hakuriver task submit [OPTIONS] -- CMD ...
    hakuriver.docker create-tar NAME ...     hakuriver docker create-tar NAME ...
    hakuriver.docker-shell NAME              hakuriver docker-shell NAME
    hakuriver.vps submit|status|kill|list    hakuriver vps submit|status|kill|list
    hakuriver.vps command ID pause           hakuriver vps pause ID
    hakuriver.ssh ID [-- ssh args]           hakuriver ssh ID [-- ssh args]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cli.hakuriver.invocation import EXIT_USAGE, fail
from cli.hakuriver.main import main

CLIENT_USAGE = """\
usage: hakuriver.client [OPTIONS] -- COMMAND [ARG...]   submit (options as `hakuriver task submit`)
       hakuriver.client status ID | --status ID         show a task
       hakuriver.client kill ID | --kill ID             stop a task
       hakuriver.client pause ID | resume ID            pause or resume a task
       hakuriver.client command ID status|kill|pause|resume
       hakuriver.client nodes | --list-nodes            list the nodes
       hakuriver.client health [NODE] | --health [NODE] cluster or node health
Every form also takes --config FILE and --token TOKEN; the read forms take --json.
The same commands: `hakuriver task --help`, `hakuriver node --help`.
"""

# hakuriver.client's subcommand words and the hakuriver command each one means.
_CLIENT_WORDS = {
    "status": ("task", "status"),
    "kill": ("task", "kill"),
    "pause": ("task", "pause"),
    "resume": ("task", "resume"),
    "nodes": ("node", "list"),
    "health": ("node", "health"),
}
# hakuriver.client's flag forms: the flag, the command, whether it takes a value.
_CLIENT_FLAGS = {
    "--status": (("task", "status"), "required"),
    "--kill": (("task", "kill"), "required"),
    "--list-nodes": (("node", "list"), "none"),
    "--health": (("node", "health"), "optional"),
}
_ACTIONS = ("status", "kill", "pause", "resume")


class SeedUsageError(ValueError):
    """Words that no seed spelling accepts; the message says what was expected."""


def task_words(argv: Sequence[str]) -> list[str]:
    """``hakuriver.task`` words as ``hakuriver`` words (``command ID ACTION`` reordered)."""
    words = list(argv)
    if words[:1] == ["command"]:
        return ["task", *_command_form(words[1:])]
    return ["task", *words]


def client_words(argv: Sequence[str]) -> list[str]:
    """``hakuriver.client`` words (subcommand, flag or submit form) as ``hakuriver`` words."""
    words = list(argv)
    head = words[: words.index("--")] if "--" in words else words
    if head[:1] and head[0] in _CLIENT_WORDS:
        return [*_CLIENT_WORDS[head[0]], *words[1:]]
    if head[:1] == ["command"]:
        return ["task", *_command_form(words[1:])]
    found = [i for i, word in enumerate(head) if word.split("=", 1)[0] in _CLIENT_FLAGS]
    if not found:
        return ["task", "submit", *words]
    if len(found) > 1:
        flags = " and ".join(head[i].split("=", 1)[0] for i in found)
        raise SeedUsageError(f"{flags} cannot be used together; give one")
    if len(head) < len(words):
        raise SeedUsageError(f"{head[found[0]].split('=', 1)[0]} takes no command after --")
    return _flag_form(head, found[0])


def _flag_form(words: list[str], at: int) -> list[str]:
    """``--status ID`` and friends: the command, its value, then every other word."""
    flag, equals, inline = words[at].partition("=")
    command, arity = _CLIENT_FLAGS[flag]
    rest = words[:at]
    following = words[at + 1 :]
    value: list[str] = []
    if equals:
        if arity == "none":
            raise SeedUsageError(f"{flag} takes no value")
        value = [inline]
    elif arity != "none" and following and not following[0].startswith("-"):
        value = [following.pop(0)]
    elif arity == "required":
        raise SeedUsageError(f"{flag} needs a task id, as in {flag} ID")
    return [*command, *value, *rest, *following]


def vps_words(argv: Sequence[str]) -> list[str]:
    """``hakuriver.vps`` words as ``hakuriver`` words (``command ID ACTION`` reordered)."""
    words = list(argv)
    if words[:1] == ["command"]:
        return ["vps", *_command_form(words[1:])]
    return ["vps", *words]


def _command_form(words: list[str]) -> list[str]:
    """``ID ACTION [OPTIONS]`` (the seeds' ``command`` form) as ``ACTION ID [OPTIONS]``."""
    if len(words) < 2 or words[1] not in _ACTIONS:
        raise SeedUsageError(f"use: command ID {'|'.join(_ACTIONS)}")
    task_id, action, *options = words
    return [action, task_id, *options]


def _run(translate: str, argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        if translate == "client":
            if not words or words[0] in ("-h", "--help"):
                sys.stdout.write(CLIENT_USAGE)
                return 0 if words else EXIT_USAGE
            words = client_words(words)
        elif translate == "task":
            words = task_words(words)
        elif translate == "vps":
            words = vps_words(words)
        else:
            words = [translate, *words]
    except SeedUsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    return main(words)


def host_main(argv: Sequence[str] | None = None) -> int:
    """``hakuriver.host [--config FILE]``: the control plane."""
    return _run("host", argv)


def runner_main(argv: Sequence[str] | None = None) -> int:
    """``hakuriver.runner [--config FILE] [--name NODE]``: a node agent."""
    return _run("runner", argv)


def task_main(argv: Sequence[str] | None = None) -> int:
    """``hakuriver.task submit|status|list|kill|pause|resume|stdout|stderr|command ...``."""
    return _run("task", argv)


def client_main(argv: Sequence[str] | None = None) -> int:
    """``hakuriver.client``: the seeds' subcommand and flag forms, and submission."""
    return _run("client", argv)


def init_main(argv: Sequence[str] | None = None) -> int:
    """``hakuriver.init config [--path FILE]``, ``hakuriver.init service --host|--runner``."""
    return _run("init", argv)


def docker_main(argv: Sequence[str] | None = None) -> int:
    """``hakuriver.docker list-containers|create-container|...|create-tar|list-tars``."""
    return _run("docker", argv)


def docker_shell_main(argv: Sequence[str] | None = None) -> int:
    """``hakuriver.docker-shell NAME``: a shell in the host's environment container."""
    return _run("docker-shell", argv)


def vps_main(argv: Sequence[str] | None = None) -> int:
    """``hakuriver.vps submit|status|list|kill|stop|shell|command ID pause|resume``."""
    return _run("vps", argv)


def ssh_main(argv: Sequence[str] | None = None) -> int:
    """``hakuriver.ssh ID [-- ssh args]``: ssh into a VPS task through the host's gateway."""
    return _run("ssh", argv)
