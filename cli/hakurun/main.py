"""The ``hakurun`` command: parse hakurun's options, expand the spans, run or print.

hakurun's own options come before the target and parsing stops at the first
word that is not one of them (or after ``--``): everything from the target on
belongs to the target, so ``hakurun python script.py --parallel`` hands
``--parallel`` to the script. That rule is why the options are parsed by hand
here rather than by an option library, which would look for options among the
target's arguments too.

``--submit`` sends the combinations to the cluster instead of running them:
the words after it, up to ``--``, are ``hakuriver task submit``'s options and are
parsed by that command's own definitions (``cli.hakuriver.submission``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cli.hakurun.runner import Interrupted, Job, Result, run_jobs
from cli.hakurun.spans import (
    Axis,
    SpanError,
    count_combinations,
    expand,
    is_span,
    iter_combinations,
    parse_arguments,
    quoted_command,
    requote,
)
from cli.hakurun.targets import Target, TargetError, resolve

USAGE = """\
usage: hakurun [--parallel] [-j N] [--dry-run] [--] TARGET [ARG...]
       hakurun [--dry-run] --submit [SUBMIT OPTIONS] -- COMMAND [ARG...]

Run TARGET once for every combination of its span arguments, on this machine,
or with --submit submit every combination to the cluster as its own task.

spans (quote them, or your shell expands the braces itself):
  'span:{1..5}'           the integers 1 to 5 (also 'span:{5..1}', 'span:{-2..2}')
  'span:{A..E}'           the letters A to E (also 'span:{e..a}'; one case)
  'span:{32,64,128}'      the listed values
  'span:[small,large]'    the listed values
  several spans run every combination, the first span varying slowest.

targets:
  ./tool, echo, python script.py   an executable (a path, or a name on PATH)
  module                           python -m module, when no executable has the name
  module:function                  function(*args) with the arguments as strings

options:
  --parallel      run combinations concurrently (output of each kept together,
                  labelled on stderr)
  -j, --jobs N    at most N at once (implies --parallel; default: the CPU count)
  --dry-run       print the expanded commands, one per line, and run nothing
                  (with --submit: the submit requests, one JSON per line)
  --submit        submit each combination as a task, all in one batch; the
                  options up to -- are hakuriver task submit's (--target,
                  --cores, --memory, --env, --container, --wait, ...); prints
                  the batch id, then the task ids
  -h, --help      show this help
  --              end of hakurun's options

exit status: 0 all combinations succeeded, 1 some failed, 2 usage error,
128+N stopped by signal N (130 for Ctrl-C).
"""


class UsageError(ValueError):
    """Command-line options hakurun does not understand."""


@dataclass(frozen=True)
class Options:
    """hakurun's own options and the target's words (the target first)."""

    command: tuple[str, ...] = ()
    parallel: bool = False
    jobs: int | None = None
    dry_run: bool = False
    help: bool = False
    submit: tuple[str, ...] | None = None  # task submit's options; None: run locally


def parse_options(argv: Sequence[str]) -> Options:
    """Split argv into hakurun's options and the target's words; raises ``UsageError``."""
    parallel = dry_run = False
    jobs: int | None = None
    submit: tuple[str, ...] | None = None
    position = 0
    while position < len(argv):
        word = argv[position]
        position += 1
        if word == "--":
            break
        if word in ("-h", "--help"):
            return Options(help=True)
        if word == "--submit":
            submit, position, dry_run = _submit_options(argv, position, dry_run)
            if submit == ("--help",):
                return Options(help=True, submit=submit)
            break
        if word == "--parallel":
            parallel = True
        elif word == "--dry-run":
            dry_run = True
        elif word in ("-j", "--jobs"):
            if position == len(argv):
                raise UsageError(f"{word} needs a number")
            jobs = _job_count(argv[position])
            position += 1
        elif word.startswith("--jobs="):
            jobs = _job_count(word.removeprefix("--jobs="))
        elif word.startswith("-j") and len(word) > 2:
            jobs = _job_count(word[2:])
        elif word.startswith("-") and word != "-":
            raise UsageError(f"unknown option {word!r} (hakurun's options go before the target)")
        else:
            position -= 1
            break
    command = tuple(argv[position:])
    if not command:
        raise UsageError("no target given" if submit is None else "no command given after --")
    if submit is not None and (parallel or jobs is not None):
        raise UsageError("--parallel and -j run locally; with --submit the cluster runs them")
    return Options(
        command=command,
        parallel=parallel or jobs is not None,
        jobs=jobs,
        dry_run=dry_run,
        submit=submit,
    )


def _submit_options(
    argv: Sequence[str], position: int, dry_run: bool
) -> tuple[tuple[str, ...], int, bool]:
    """The words after ``--submit`` up to ``--`` (hakurun's ``--dry-run`` taken out)."""
    rest = list(argv[position:])
    own = rest[: rest.index("--")] if "--" in rest else rest
    if "-h" in own or "--help" in own:
        return ("--help",), len(argv), dry_run
    if len(own) == len(rest):
        raise UsageError(
            "with --submit, end the submit options with -- before the command, as in"
            " hakurun --submit --target node1 -- python train.py 'span:{1..3}'"
        )
    words = tuple(own)
    if "--dry-run" in words:
        dry_run = True
        words = tuple(word for word in words if word != "--dry-run")
    return words, position + len(own) + 1, dry_run


def _job_count(text: str) -> int:
    """A positive ``-j`` value."""
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"-j expects a whole number, not {text!r}") from None
    if count < 1:
        raise UsageError(f"-j must be at least 1, not {count}")
    return count


def default_jobs() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def plan(target: Target, axes: Sequence[Axis]) -> Iterator[Job]:
    """One job per combination, in product order."""
    for index, arguments in enumerate(iter_combinations(axes), start=1):
        yield Job(index, tuple(target.argv(arguments)), target.describe(arguments))


def failure_summary(failures: Sequence[Result], total: int) -> str:
    """The lines naming every failed combination, in combination order."""
    lines = [f"hakurun: {len(failures)} of {total} combinations failed:"]
    for result in sorted(failures, key=lambda failed: failed.job.index):
        lines.append(f"  [{result.job.index}/{total}] {result.status()}: {result.job.label}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run hakurun with these arguments (``sys.argv[1:]`` by default); the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        options = parse_options(arguments)
        if options.help:
            sys.stdout.write(USAGE)
            if options.submit is not None:
                sys.stdout.write("\n")
                return _submit(options.submit, ["hakurun"], dry_run=True)
            return 0
        target_word, *target_arguments = options.command
        axes = parse_arguments(target_arguments)
        if is_span(target_word):
            raise UsageError(f"the target {target_word!r} cannot be a span")
        if options.submit is not None:
            # The command runs on a node, so it is not resolved here.
            return _submit(options.submit, options.command, dry_run=options.dry_run)
        target = resolve(target_word)
    except (UsageError, SpanError, TargetError) as error:
        sys.stderr.write(f"hakurun: {error}\n")
        if isinstance(error, SpanError):
            sys.stderr.write(_requoted_hint(arguments, options.command))
        if isinstance(error, UsageError):
            sys.stderr.write(USAGE.split("\n\n", 1)[0] + "\n")
        return 2
    total = count_combinations(axes)
    try:
        if options.dry_run:
            return _print_commands(plan(target, axes))
        return _run(plan(target, axes), total, options)
    except BrokenPipeError:
        # Our stdout was closed early (``hakurun --dry-run ... | head``): stop quietly.
        _silence_stdout()
        return 1
    except KeyboardInterrupt:
        # Ctrl-C outside a run (while printing a long dry run): no child to stop.
        return 130


def _requoted_hint(arguments: Sequence[str], command: Sequence[str]) -> str:
    """The command to type instead, when the shell expanded unquoted spans; or nothing.

    ``command`` (the target and its words) ends ``arguments``: hakurun's own options,
    and ``--submit``'s, are kept as typed before it. Adjacent spans expanded by the
    shell (``span:{1,2} span:{3,4}``) read as one span of four values, so the hint says
    how to tell it otherwise when a run is that long.
    """
    rebuilt = requote(command[1:])
    if rebuilt is None:
        return ""
    options = list(arguments[: len(arguments) - len(command)])
    line = quoted_command(["hakurun", *options, command[0], *rebuilt])
    hint = f"hakurun: your shell expanded the braces of an unquoted span; run instead:\n  {line}\n"
    if len(command) - 1 - len(rebuilt) >= 3:  # four words or more were put back as one
        hint += "hakurun: (if those words came from several spans, quote each span as typed)\n"
    return hint


def _submit(submit_options: Sequence[str], command: Sequence[str], *, dry_run: bool) -> int:
    """Submit one task per combination, in one batch; raises ``SpanError``.

    Imported here so that plain hakurun does not load the cluster client.
    """
    from cli.hakuriver.submission import submit_sweep

    vectors = expand(command[1:])
    return submit_sweep(submit_options, command[0], vectors, dry_run=dry_run)


def _print_commands(jobs: Iterator[Job]) -> int:
    for job in jobs:
        sys.stdout.write(job.label + "\n")
    sys.stdout.flush()
    return 0


def _run(jobs: Iterator[Job], total: int, options: Options) -> int:
    sys.stdout.flush()
    try:
        results = run_jobs(
            jobs,
            total=total,
            parallel=options.parallel,
            limit=options.jobs or default_jobs(),
            stdout=sys.stdout.buffer,
            stderr=sys.stderr.buffer,
        )
    except Interrupted as stop:
        sys.stderr.write(
            f"hakurun: interrupted by {stop}; stopped {stop.stopped} running combination(s)\n"
        )
        return 128 + stop.signum
    failures = [result for result in results if result.failed]
    if failures:
        sys.stderr.write(failure_summary(failures, total))
        return 1
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
