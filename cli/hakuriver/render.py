"""Rich renderings of the API's documents: task and node tables, details, health.

Every function takes the JSON dicts the API returns (``control_plane/views.py``)
and tolerates missing keys, so an older or newer server never crashes the CLI.
Sizes are 1000-based like the seeds' ``--memory`` (``512M``, ``4G``).
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cli.hakuriver.output import printable_doc
from events.config import is_no_container

Doc = Mapping[str, Any]
P = ParamSpec("P")
R = TypeVar("R")


def escaped(render: Callable[P, R]) -> Callable[P, R]:
    """A renderer that shows the documents it is given as text: every string in its
    arguments (names, commands, messages: anything a user or a node chose) goes through
    ``output.printable`` first, so control characters print as escapes (``\\x1b``) and
    columns are measured on what is printed. Every public renderer of the ``*render*``
    modules is one (tests/cli/test_terminal_escapes.py checks it)."""

    @functools.wraps(render)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        clean_args = [printable_doc(arg) for arg in args]
        clean_kwargs = {key: printable_doc(value) for key, value in kwargs.items()}
        return render(*clean_args, **clean_kwargs)

    run.escaped = True  # type: ignore[attr-defined]
    return run


STATE_STYLES = {
    "pending": "yellow",
    "assigning": "yellow",
    "running": "cyan",
    "paused": "magenta",
    "completed": "green",
    "failed": "red",
    "killed": "red",
    "killed_oom": "red",
    "lost": "bright_black",
    "unknown": "yellow",
}

_UNITS = ("B", "K", "M", "G", "T", "P")


def human_size(size: int | float | None) -> str:
    """``1500000`` as ``1.5M`` (1000-based, as ``--memory`` reads); None as ``-``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1000 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(value)}B"
            text = f"{value:.1f}"
            return text.removesuffix(".0") + unit
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def human_duration(seconds: float | None) -> str:
    """``75.3`` as ``1m15s``; None as ``-``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def human_time(stamp: str | None, *, short: bool = False) -> str:
    """An RFC 3339 stamp cut to seconds: ``2026-11-21 10:00:00Z``, short ``11-21 10:00:00``."""
    if not stamp:
        return "-"
    date, _, clock = stamp.partition("T")
    if not clock:
        return stamp
    return f"{date[5:]} {clock[:8]}" if short else f"{date} {clock[:8]}Z"


def state_text(state: str | None) -> Text:
    """A task state, coloured by how it went."""
    state = state or "?"
    return Text(state, style=STATE_STYLES.get(state, ""))


def plural(count: int, noun: str) -> str:
    """``1 core``, ``2 cores``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def command_line(task: Doc, width: int | None = None) -> str:
    """The task's argument vector as a shell would read it (``shlex.join``), cut to ``width``."""
    line = shlex.join([str(task.get("command", "")), *map(str, task.get("args") or [])])
    if width is not None and len(line) > width:
        return line[: width - 1] + "…"
    return line


def task_ref(task: Doc) -> str:
    """What people call a task: its number (its id from a server that gives none)."""
    return str(task.get("number") or task.get("task_id", "?"))


def task_label(task: Doc) -> str:
    """A task named in a title: its number, with its full id."""
    if task.get("number"):
        return f"{task['number']} ({task.get('task_id', '?')})"
    return str(task.get("task_id", "?"))


def _placement(task: Doc) -> str:
    node = task.get("node") or task.get("target") or "-"
    numa = task.get("numa_id")
    gpus = task.get("gpu_ids") or []
    text = str(node)
    if numa is not None:
        text += f":{numa}"
    if gpus:
        text += "::" + ",".join(map(str, gpus))
    return text


# --- tasks ---------------------------------------------------------------------------


@escaped
def task_table(tasks: Sequence[Doc], width: int = 200) -> Table:
    """The ``task list`` table, newest first as the API sends them, fitted to ``width``.

    The command wraps in the room left; when even a narrow command column does not fit,
    the least important columns go first (memory, cores, the submission date, then the
    submission time, the node, the exit code). Number, state and command always stay.
    """
    rows = [_task_row(task) for task in tasks]
    columns = list(_TASK_COLUMNS)
    widths = {c: max([len(c), *(len(row[c]) for row in rows)]) for c in columns}
    widths["SUBMITTED"] = len("SUBMITTED")  # its short form: the time only
    label = max([len(_LABEL), *(len(row[_LABEL]) for row in rows)])
    wanted = min(label, _COMMAND_ROOM)
    for drop in (None, *_DROP_ORDER):
        if drop == "SUBMITTED (UTC)":  # first shortened to the time of day
            columns[columns.index(drop)] = "SUBMITTED"
        elif drop is not None:
            columns.remove(drop)
        room = width - sum(widths[c] for c in columns) - _GAP * len(columns)
        if room >= wanted:
            break
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True, min_width=widths[column], max_width=widths[column])
    room = max(room, 10)
    table.add_column(_LABEL, overflow="fold", min_width=min(label, room), max_width=room)
    for task, row in zip(tasks, rows, strict=True):
        cells: list[Text | str] = [
            state_text(task.get("state")) if c == "STATE" else row[c] for c in columns
        ]
        table.add_row(*cells, Text(row[_LABEL]))
    return table


_LABEL = "NAME / COMMAND"
_TASK_COLUMNS = ("ID", "STATE", "NODE", "CORES", "MEMORY", "SUBMITTED (UTC)", "EXIT")
_DROP_ORDER = ("MEMORY", "CORES", "SUBMITTED (UTC)", "SUBMITTED", "NODE", "EXIT")
# The command column's width below which columns are dropped, and the space between columns.
_COMMAND_ROOM = 24
_GAP = 2
# A command longer than this is cut, even where there is room to wrap it.
_COMMAND_MAX = 500


def _task_row(task: Doc) -> dict[str, str]:
    exit_code = task.get("exit_code")
    label = command_line(task, _COMMAND_MAX)
    if task.get("name"):
        label = f"[{task['name']}] {label}"
    if task.get("task_type") == "vps":
        label = f"(vps) {label}"
    submitted = human_time(task.get("submitted_at"), short=True)
    return {
        "ID": task_ref(task),
        "STATE": str(task.get("state") or "?"),
        "NODE": _placement(task),
        "CORES": str(task.get("cores", "-")),
        "MEMORY": human_size(task.get("memory_bytes")),
        "SUBMITTED (UTC)": submitted,
        "SUBMITTED": submitted.rpartition(" ")[2],
        "EXIT": "-" if exit_code is None else str(exit_code),
        _LABEL: label,
    }


@escaped
def task_detail(task: Doc) -> Panel:
    """``task status``: every field of one task, grouped."""
    grid = _grid()
    mounts = [_mount(m) for m in task.get("mounts") or []]
    env = task.get("env") or {}
    rows: list[tuple[str, RenderableType | str]] = [
        ("id", str(task.get("task_id", "?"))),
        ("state", state_text(task.get("state"))),
        ("command", Text(command_line(task))),
        ("name", task.get("name") or "-"),
        ("owner", str(task.get("owner", "-"))),
        ("type", str(task.get("task_type", "command"))),
        ("batch", str(task.get("batch_id", "-"))),
        ("target", task.get("target") or "any node"),
        ("node", _placement(task) if task.get("node") else "-"),
        ("cores", str(task.get("cores", "-"))),
        ("memory", human_size(task.get("memory_bytes"))),
        ("GPUs", ",".join(map(str, task.get("gpu_ids") or [])) or "-"),
        ("container", _container(task)),
        ("privileged", "yes" if task.get("privileged") else "no"),
        ("mounts", "\n".join(mounts) or "-"),
        ("env", "\n".join(f"{k}={v}" for k, v in env.items()) or "-"),
        ("submitted", human_time(task.get("submitted_at"))),
        ("placed", human_time(task.get("placed_at"))),
        ("started", human_time(task.get("started_at"))),
        ("finished", human_time(task.get("finished_at"))),
        ("queue wait", human_duration(task.get("queue_wait_s"))),  # submitted -> placed
        ("start delay", human_duration(task.get("start_delay_s"))),  # placed -> started
        ("run time", human_duration(task.get("run_time_s"))),
        ("exit code", _or_dash(task.get("exit_code"))),
        ("pid", _or_dash(task.get("pid"))),
        ("container id", _or_dash(task.get("container_id"))),
        ("kill requested by", _or_dash(task.get("kill_requested_by"))),
        ("message", Text(task.get("message") or "-")),
    ]
    for key, value in rows:
        grid.add_row(key, value)
    title = Text(f"task {task_ref(task)}")  # a Text: a title string is read as markup
    return Panel(grid, title=title, title_align="left", expand=False)


def _container(task: Doc) -> str:
    # The host resolves the default at submission: null means the task runs as a process.
    container = task.get("container")
    if container is None or is_no_container(container):
        return "NULL (plain process)"
    return str(container)


def _mount(mount: Any) -> str:
    if isinstance(mount, Mapping):
        text = f"{mount.get('host_path')}:{mount.get('container_path')}"
        return text + (":ro" if mount.get("read_only") else "")
    return str(mount)


@escaped
def final_line(task: Doc) -> str:
    """One line for a task that is done: number, state, exit code, node, message."""
    parts = [task_ref(task), str(task.get("state", "?"))]
    if task.get("exit_code") is not None:
        parts.append(f"exit={task['exit_code']}")
    if task.get("node"):
        parts.append(f"node={task['node']}")
    if task.get("message"):
        parts.append(str(task["message"]))
    return "  ".join(parts)


# --- nodes and health --------------------------------------------------------------


@escaped
def node_table(nodes: Sequence[Doc]) -> Table:
    """``node list``: one row per node with free/total resources and load."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NODE", "STATUS", "CORES", "MEMORY", "NUMA", "GPUS", "CPU%", "MEM%", "TASKS"):
        table.add_column(column, no_wrap=True)
    for node in nodes:
        table.add_row(
            str(node.get("name", "?")),
            _online(node),
            f"{node.get('free_cores', '-')}/{node.get('cores', '-')}",
            f"{human_size(node.get('free_memory_bytes'))}/{human_size(node.get('memory_bytes'))}",
            str(len(node.get("numa") or [])),
            f"{len(node.get('free_gpus') or [])}/{len(node.get('gpus') or [])}",
            _percent(node.get("cpu_percent")),
            _percent(node.get("memory_percent")),
            str(len(node.get("running_task_ids") or [])),
        )
    return table


@escaped
def node_detail(node: Doc) -> Panel:
    """``node health NODE``: resources, load, NUMA layout, GPUs and temperatures."""
    grid = _grid()
    grid.add_row("status", _online(node))
    grid.add_row("address", str(node.get("address", "-")))
    grid.add_row("executors", ", ".join(node.get("executors") or []) or "-")
    grid.add_row("cores", f"{node.get('free_cores', '-')} free of {node.get('cores', '-')}")
    grid.add_row(
        "memory",
        f"{human_size(node.get('free_memory_bytes'))} free of"
        f" {human_size(node.get('memory_bytes'))} schedulable;"
        f" {human_size(node.get('memory_used_bytes'))} in use",
    )
    grid.add_row("cpu load", _percent(node.get("cpu_percent")))
    grid.add_row("memory load", _percent(node.get("memory_percent")))
    numa = node.get("numa") or []
    grid.add_row("NUMA", "\n".join(_numa(n) for n in numa) or "-")
    temperatures = node.get("temperatures") or {}
    grid.add_row(
        "temperatures",
        "  ".join(f"{name} {value:.0f}°C" for name, value in temperatures.items()) or "-",
    )
    running = node.get("running_task_numbers") or node.get("running_task_ids") or []
    grid.add_row("running tasks", ", ".join(map(str, running)) or "-")
    grid.add_row("registered", human_time(node.get("registered_at")))
    grid.add_row("last seen", human_time(node.get("last_seen")))
    parts: list[RenderableType] = [grid]
    if node.get("gpus"):
        parts.append(gpu_table(node))
    title = Text(f"node {node.get('name', '?')}")
    return Panel(Group(*parts), title=title, title_align="left", expand=False)


@escaped
def gpu_table(node: Doc) -> Table:
    """A node's GPUs: model, memory, whether free, utilisation and temperature."""
    usage = {u.get("id"): u for u in node.get("gpu_usage") or []}
    free = set(node.get("free_gpus") or [])
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("GPU", "MODEL", "FREE", "UTIL%", "MEMORY USED", "TEMP"):
        table.add_column(column, no_wrap=True)
    for gpu in node.get("gpus") or []:
        gpu_id = gpu.get("id")
        load = usage.get(gpu_id, {})
        temperature = load.get("temperature_c")
        table.add_row(
            str(gpu_id),
            str(gpu.get("name", "?")),
            "yes" if gpu_id in free else "no",
            _percent(load.get("utilization_percent")),
            f"{human_size(load.get('memory_used_bytes'))}/{human_size(gpu.get('memory_bytes'))}",
            "-" if temperature is None else f"{temperature:.0f}°C",
        )
    return table


@escaped
def health_panel(health: Doc) -> Panel:
    """``GET /api/health``: status, nodes online, tasks by state, anomalies."""
    grid = _grid()
    status = str(health.get("status", "?"))
    grid.add_row("status", Text(status, style="green" if status == "ok" else "red"))
    if health.get("reason"):  # degraded: why (the event log cannot be written...)
        grid.add_row("why", Text(str(health["reason"]), style="red"))
    grid.add_row(
        "nodes online", f"{health.get('nodes_online', '-')}/{health.get('nodes_total', '-')}"
    )
    tasks = health.get("tasks") or {}
    grid.add_row("tasks", "  ".join(f"{state} {count}" for state, count in tasks.items()) or "-")
    grid.add_row("anomalies", str(health.get("anomalies", "-")))
    grid.add_row("last event", str(health.get("last_seq", "-")))
    return Panel(grid, title="cluster", title_align="left", expand=False)


@escaped
def health_report(health: Doc, nodes: Iterable[Doc]) -> Group:
    """``node health``: the cluster panel, then every node's detail."""
    return Group(health_panel(health), *(node_detail(node) for node in nodes))


def _grid() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    return grid


def _online(node: Doc) -> Text:
    return Text("online", style="green") if node.get("online") else Text("offline", style="red")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _numa(numa: Doc) -> str:
    cpus = numa.get("cpus") or []
    memory = human_size(numa.get("memory_bytes"))
    return f"{numa.get('id')}: {_ranges(cpus)} ({len(cpus)} CPUs, {memory})"


def _ranges(numbers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "-"


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
