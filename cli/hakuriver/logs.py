"""The host's and the runner's own log: one format, one place, files that rotate.

``hakuriver host``, ``runner`` and ``up`` log one line per record, in a human format by
default or as JSON lines (``--log-format json``, ``[logging] format = "json"``), to
stderr or to a file (``--log-file``, ``[logging] file``) that rotates by size
(``[logging] max_bytes``, ``backups``). Every line of interest (events/log_lines.py:
submitted, placed, started, finished, nodes online and offline...) carries the task,
node and job it concerns as context fields; JSON lines have them as keys, human lines
as ``task=... node=...`` at the end. The runner puts its own node on every line.

One handler, on the root logger, serves everything: ours (``hakuriver.*``, at the
configured level), Sanic's (its handlers are taken off after it configured them, so its
warnings and errors are ours too; its start-up chatter only at ``DEBUG``; access lines
stay off: the event log records every request that changes something, with who made
it), and any library's warnings.

A line is always one line: control characters and line separators in a message or a
field (a task's name, a command, a reason: text users choose) are written as escapes
(``\\n``, ``\\x1b``), so no input can forge a line or drive the terminal of whoever
tails the log. JSON lines escape them as JSON does.

Rotation is ``RotatingFileHandler``'s (a size and a number of old files, ``.1`` the
newest), done by the process itself, so no logrotate set-up is needed and nothing is
lost at a rotation. The file is made private (0600): it names users, tasks and
commands. ``up`` runs two processes: the runner of ``up`` writes its own file beside
the host's (``<name>-runner<suffix>``), as two processes rotating one file would lose
lines.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler
from pathlib import Path
from typing import Any, Literal

import msgspec
import orjson
from cyclopts import Parameter

from cli.hakuriver.config import ConfigError

LogFormat = Literal["human", "json"]
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Context fields, in the order lines show them (``event`` and ``seq`` on JSON lines only:
# the human message already says what happened).
CONTEXT = ("event", "task", "node", "job", "user", "seq")
HUMAN_CONTEXT = ("task", "node", "job", "user")
# The loggers Sanic configures for itself (sanic.log); ours take their lines over.
HANDLER_NAME = "hakuriver"  # ours, replaced by a second set-up
SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.server", "sanic.websockets", "sanic.access")


class LogSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[logging]``: how the host and the runner log."""

    format: LogFormat = "human"
    level: str = "INFO"
    file: str = ""  # empty: stderr
    max_bytes: int = msgspec.field(default=10 * 2**20)  # a file rotates past this size
    backups: int = 5  # how many rotated files are kept (.1 the newest)


@Parameter(name="*")
@dataclass(frozen=True)
class LogOptions:
    """The log options of ``host``, ``runner`` and ``up`` (over ``[logging]``)."""

    log_format: LogFormat | None = None
    """How lines are written: human (default) or json (one JSON object a line)."""

    log_file: Path | None = None
    """Write the log to this file (rotated by size: [logging] max_bytes, backups) instead
    of stderr."""

    log_level: str | None = None
    """The least severe level written: DEBUG, INFO (default), WARNING, ERROR."""


def merged(
    config: dict[str, Any], options: LogOptions | None = None, *, runner: bool = False
) -> dict[str, Any]:
    """``config`` with the log options applied over its ``[logging]`` section, checked.

    Precedence: the command's options, then ``$HAKURIVER_LOG`` (a level), then the file.
    ``runner``: a runner given ``[logging] file`` by the configuration (not by
    ``--log-file``) writes ``NAME-runner.EXT`` beside it, as ``up``'s runner does: a host
    and a runner on one machine share one file (the systemd units pass both the same
    ``--config``), and two processes rotating one file lose lines.
    """
    given = config.get("logging", {})
    if not isinstance(given, dict):
        raise ConfigError("configuration: [logging] must be a table ([logging] and its keys)")
    section = dict(given)
    if runner and section.get("file") and (options is None or options.log_file is None):
        section["file"] = runner_file(str(section["file"]))
    if os.environ.get("HAKURIVER_LOG"):
        section["level"] = os.environ["HAKURIVER_LOG"]
    if options is not None:
        if options.log_format is not None:
            section["format"] = options.log_format
        if options.log_file is not None:
            section["file"] = str(options.log_file)
        if options.log_level is not None:
            section["level"] = options.log_level
    settings_of({"logging": section})  # refused now, in one line, rather than at start
    return {**config, "logging": section}


def settings_of(config: dict[str, Any]) -> LogSettings:
    """The ``[logging]`` section of ``config``; ``ConfigError`` naming a wrong key."""
    try:
        settings = msgspec.convert(config.get("logging", {}), LogSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"configuration: [logging]: {exc}") from None
    level = settings.level.upper()
    if level not in LEVELS:
        raise ConfigError(
            f"configuration: [logging] level: {settings.level!r} is not one of {', '.join(LEVELS)}"
        )
    if settings.max_bytes < 1024 or settings.backups < 1:
        raise ConfigError(
            "configuration: [logging] max_bytes must be at least 1024 and backups at least 1"
        )
    return msgspec.structs.replace(settings, level=level)


def runner_file(path: str) -> str:
    """Where the runner of ``up`` logs when the host logs to ``path``."""
    file = Path(path)
    return str(file.with_name(f"{file.stem}-runner{file.suffix}"))


def child_args(config: dict[str, Any]) -> list[str]:
    """The options that give the runner of ``up`` the host's log settings
    (``python -m cli.hakuriver.serve runner ...``)."""
    settings = settings_of(config)
    args = ["--log-format", settings.format, "--log-level", settings.level]
    if settings.file:
        args += ["--log-file", runner_file(settings.file)]
    return args


# -- escaping -----------------------------------------------------------------------------

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escaped(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every character that is not printable written as an escape.

    Control characters (C0, DEL, C1: ESC sequences, a newline that would start a forged
    line), line and paragraph separators and invisible format characters (bidi controls)
    all go; ``keep_newlines`` keeps ``\\n`` (a traceback's lines).
    """
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if ch == " " or ch.isprintable() or (keep_newlines and ch == "\n"):
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif unicodedata.category(ch) == "Zs":  # a space of another width: harmless
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def _context(record: logging.LogRecord, keys: tuple[str, ...]) -> list[tuple[str, Any]]:
    found = []
    for key in keys:
        value = getattr(record, key, None)
        if value is not None and value != "":
            found.append((key, value))
    return found


# -- formatters ---------------------------------------------------------------------------


class _Clock:
    """``time.strftime`` of a record's second, remembered for the next record of the same
    second (a commit's thousand lines share one time; ``localtime`` and ``strftime`` were
    a third of a line's formatting)."""

    def __init__(self, pattern: str, convert: Callable[[float], time.struct_time]) -> None:
        self.pattern = pattern
        self.convert = convert
        self.last: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        last = self.last  # one read: another thread may replace it meanwhile
        if last[0] == second:
            return last[1]
        text = time.strftime(self.pattern, self.convert(second))
        self.last = (second, text)
        return text


class HumanFormatter(logging.Formatter):
    """``2025-01-02 03:04:05.678 INFO hakuriver.host.events: task finished: completed,
    exit code 0 task=... node=...``: one line a record (a traceback's lines indented)."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock("%Y-%m-%d %H:%M:%S", time.localtime)

    def format(self, record: logging.LogRecord) -> str:
        clock = self._clock(record.created)
        millis = int(record.created * 1000) % 1000
        line = (
            f"{clock}.{millis:03d} {record.levelname} {record.name}: {escaped(record.getMessage())}"
        )
        for key, value in _context(record, HUMAN_CONTEXT):
            line += f" {key}={escaped(str(value))}"
        extra = self._extra(record)
        if extra:
            line += "\n" + "\n".join(f"    {part}" for part in extra.splitlines())
        return line

    def _extra(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return escaped("\n".join(parts), keep_newlines=True)


class JsonFormatter(logging.Formatter):
    """One JSON object a record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``,
    the context fields present (``event``, ``task``, ``node``, ``job``, ``user``,
    ``seq``), and ``exc`` (a traceback) when there is one."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        stamp = self._clock(record.created)
        millis = int(record.created * 1000) % 1000
        document: dict[str, Any] = {
            "ts": f"{stamp}.{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _context(record, CONTEXT):
            document[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        text = orjson.dumps(document).decode()
        # JSON may hold these two as they are; tools that split lines on them must not.
        return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class _NodeOnEveryLine(logging.Filter):
    """The runner's node on each of its lines that names none."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "node", None) is None:
            record.node = self.node
        return True


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A rotating file made readable by its owner only (it names users and commands)."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # a file left open to others by an older version, or by hand
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


class _Expanding(QueueListener):
    """A ``QueueListener`` that also takes a record standing for many (one with
    ``expand``: a commit's log lines, control_plane/log_lines.py) and makes them here,
    on its thread, rather than on the caller's event loop."""

    def handle(self, record: logging.LogRecord) -> None:
        expand = getattr(record, "expand", None)
        if expand is None:
            super().handle(record)
            return
        try:
            for one in expand():
                super().handle(one)
        except Exception:  # this thread writes every line: it must not die of one batch
            self.handle(
                logging.LogRecord(
                    record.name,
                    logging.ERROR,
                    record.pathname,
                    record.lineno,
                    "could not write the lines of a batch",
                    None,
                    sys.exc_info(),
                )
            )


class _OffTheLoop(QueueHandler):
    """Hands each record to a thread that writes it (``QueueListener``): the host logs a
    line per event right after its commit, on the event loop, and a slow disk or a stderr
    pipe nobody drains must not stall the loop (and the writer's acknowledgements) there.
    Records keep their exception and context (one process: nothing is pickled), so the
    writing handler formats them exactly as it would have. ``close`` (``logging.shutdown``
    at exit, and the stop's backstop) writes what is queued first. A record after a close
    starts the thread again: Sanic's ``dictConfig`` closes every handler while it sets up
    its own, and ours must go on writing after that.

    ``takes_batches``: a record with ``expand`` (a commit's lines) is queued as it is,
    and its lines are made on the writing thread (issue 19)."""

    takes_batches = True

    def __init__(self, target: logging.Handler) -> None:
        super().__init__(queue.SimpleQueue())
        self.target = target
        self.listener = _Expanding(self.queue, target, respect_handler_level=True)
        self._running = threading.Lock()
        self.listener.start()
        # What is queued is written at exit even when ``logging.shutdown`` no longer knows
        # this handler: Sanic's ``dictConfig`` empties logging's list of handlers to close
        # (it closes ours then, which a later record undoes), and the writing thread is a
        # daemon: a host stopped with lines still queued lost them (issue 19 found it, with
        # a commit's thousand lines queued at once).
        # After that drain, a record (an error logged while the interpreter collects what
        # is left: a pending task destroyed, an unclosed socket) is written here, on the
        # caller's thread: a thread started then waits forever for a start the exiting
        # interpreter never gives it, and the host hung on its way out.
        self._exiting = False
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        self._exiting = True
        self.drain()

    def enqueue(self, record: logging.LogRecord) -> None:
        if self._exiting or sys.is_finalizing():
            self.listener.handle(record)
            return
        if self.listener._thread is None:
            with self._running:
                if self._exiting or sys.is_finalizing():  # the exit drained meanwhile
                    self.listener.handle(record)
                    return
                if self.listener._thread is None:
                    self.listener.start()
        super().enqueue(record)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if hasattr(record, "expand"):
            return record  # its lines are made and formatted on the writing thread
        record.msg = record.getMessage()  # the arguments as they are now
        record.args = None
        return record

    def drain(self) -> None:
        """Write what is queued and stop the writing thread (a later record starts it)."""
        self._write(self._stop())

    def close(self) -> None:
        self._write(self._stop())
        self.target.close()
        super().close()

    def _stop(self) -> list[logging.LogRecord]:
        """Stop the writing thread; what is still queued after it (a record another thread
        queued while this one stopped it sits behind the stop's sentinel, waiting for a
        thread that never starts again at exit)."""
        left: list[logging.LogRecord] = []
        with self._running:
            if self.listener._thread is not None:  # stop() twice would fail
                self.listener.stop()
            waiting = self.queue
            assert isinstance(waiting, queue.SimpleQueue)  # made so in __init__
            while True:
                try:
                    record = waiting.get_nowait()
                except queue.Empty:
                    break
                if record is not None:  # None: a stop's sentinel (QueueListener._sentinel)
                    left.append(record)
        return left

    def _write(self, records: list[logging.LogRecord]) -> None:
        # Outside the lock: writing a record may log, and that must not wait on ourselves.
        for record in records:
            self.listener.handle(record)


# -- set-up -------------------------------------------------------------------------------


def configure(config: dict[str, Any], *, node: str | None = None) -> logging.Handler:
    """Install the process's log handler as ``[logging]`` says (on the root logger; a
    second call replaces the first's); ``node``: put on every line (a runner's name)."""
    settings = settings_of(config)
    handler: logging.Handler
    if settings.file:
        path = Path(settings.file).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = PrivateRotatingFileHandler(
                path, maxBytes=settings.max_bytes, backupCount=settings.backups, encoding="utf-8"
            )
        except OSError as exc:  # a folder, a path under /proc, no permission: one line
            raise ConfigError(
                f"configuration: [logging] file {str(path)!r}: {exc.strerror or exc}"
            ) from None
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.format == "json" else HumanFormatter())
    if node:
        handler.addFilter(_NodeOnEveryLine(node))
    handler = _OffTheLoop(handler)
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: their warnings and errors
    ours = logging.getLogger("hakuriver")
    ours.setLevel(settings.level)
    ours.propagate = True
    for old in list(ours.handlers):  # an earlier set-up's own handler
        ours.removeHandler(old)
    adopt_sanic()
    return handler


def adopt_sanic() -> None:
    """Route Sanic's loggers through ours: call again after ``Sanic()`` configured them
    (it gives each its own handler). Its warnings and errors come through; its chatter
    ("Starting worker", "Worker ready") only at ``DEBUG``, so a start refused in one
    line stays one line; access lines stay off."""
    debug = logging.getLogger("hakuriver").getEffectiveLevel() <= logging.DEBUG
    for name in SANIC_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
        logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("sanic.access").disabled = True
