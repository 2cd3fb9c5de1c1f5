"""Rich renderings of the history documents (docs/history.md): events, timelines, states.

Like render.py, every function takes the JSON the API returns and tolerates missing
keys. States reuse render.py's node and task tables: a state's nodes and tasks are
the documents ``GET /api/nodes`` and ``GET /api/tasks`` return.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from cli.hakuriver.render import (
    escaped,
    human_duration,
    human_time,
    node_table,
    state_text,
    task_label,
    task_table,
)

Doc = Mapping[str, Any]


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns[:-1]:
        table.add_column(column, no_wrap=True)
    table.add_column(columns[-1], overflow="fold", ratio=1)
    return table


@escaped
def event_line(event: Doc) -> str:
    """One event as one line, for ``events tail`` (and its ``--follow``)."""
    return (
        f"{event.get('seq', '?'):>8}  {human_time(event.get('recorded_at'), short=True)}"
        f"  {event.get('kind', '?'):<22} {_stream(event):<22} {event.get('source', '?'):<10}"
        f" {event.get('summary', '')}"
    )


def _stream(event: Doc) -> str:
    stream = str(event.get("stream", "?"))
    kind, _, name = stream.partition(":")
    if kind == "task" and len(name) > 13:
        return f"task:{name[:13]}…"
    return stream


@escaped
def event_detail(event: Doc) -> Panel:
    """``events show SEQ``: the envelope and the payload."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for key in ("kind", "stream", "source", "id", "occurred_at", "recorded_at", "hash"):
        grid.add_row(key.replace("_", " "), str(event.get(key, "-")))
    grid.add_row("summary", Text(str(event.get("summary", ""))))
    payload = json.dumps(event.get("payload"), indent=2, ensure_ascii=False)
    body = Group(grid, Syntax(payload, "json", theme="ansi_dark", background_color="default"))
    title = Text(f"event {event.get('seq', '?')}")
    return Panel(body, title=title, title_align="left", expand=False)


# The names of projections/durations.py, as task status shows them.
_DURATIONS = (
    ("queue wait", "queue_wait_s"),
    ("start delay", "start_delay_s"),
    ("run time", "run_time_s"),
)


# A job's durations (projections/durations.py, JobDurations).
_JOB_DURATIONS = (
    ("queue wait", "queue_wait_s"),
    ("setup", "setup_time_s"),
    ("run time", "run_time_s"),
)


@escaped
def timeline_table(history: Doc) -> Group:
    """``task history ID``: every event of the task (or of the job and its ranks, for a
    job's id), with the time between them."""
    job = "job_id" in history
    if job:
        head = Text(f"job {history.get('name')} ({history.get('job_id')}): ")
        head.append_text(state_text(history.get("status")))
        if history.get("nodes"):
            head.append(" on " + ", ".join(map(str, history["nodes"])))
    else:
        head = Text(f"task {task_label(history)}: ")
        head.append_text(state_text(history.get("state")))
        if history.get("node"):
            head.append(f" on {history['node']}")
    took = [
        f"{label} {human_duration(history[key])}"
        for label, key in (_JOB_DURATIONS if job else _DURATIONS)
        if history.get(key) is not None
    ]
    if took:
        head.append(" (" + ", ".join(took) + ")")
    columns = ["SEQ", "RECORDED (UTC)", "+TIME", "TOTAL", "KIND", "SOURCE", "DETAIL"]
    table = _table(*columns[:5], *(["RANK"] if job else []), *columns[5:])
    for entry in history.get("events") or []:
        rank = entry.get("rank")
        table.add_row(
            str(entry.get("seq", "?")),
            human_time(entry.get("recorded_at")),
            human_duration(entry.get("since_previous_s")),
            human_duration(entry.get("since_first_s")),
            str(entry.get("kind", "?")),
            *([("-" if rank is None else str(rank))] if job else []),
            str(entry.get("source", "?")),
            Text(str(entry.get("detail", ""))),
        )
    return Group(head, table)


@escaped
def why_panel(explanation: Doc) -> Panel:
    """``why ID``: the placement, its reason, and each other node with why it was not used."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("state", state_text(explanation.get("state")))
    grid.add_row("placement", Text(str(explanation.get("message", ""))))
    if explanation.get("placed"):
        gpus = ",".join(map(str, explanation.get("gpu_ids") or [])) or "-"
        numa = explanation.get("numa_id")
        numa = "-" if numa is None else numa
        grid.add_row("node", str(explanation.get("node")))
        grid.add_row("policy", str(explanation.get("policy") or "manual target"))
        grid.add_row(
            "resources", f"{explanation.get('cores', '-')} cores, GPUs {gpus}, NUMA {numa}"
        )
    parts: list[RenderableType] = [grid]
    rejected = explanation.get("rejected") or []
    if rejected:
        title = "not chosen" if explanation.get("placed") else "what blocks it now"
        table = _table("NODE", title.upper())
        for item in rejected:
            table.add_row(str(item.get("node", "?")), Text(str(item.get("reason", ""))))
        parts.append(table)
    return Panel(
        Group(*parts),
        title=Text(f"why task {task_label(explanation)}"),
        title_align="left",
        expand=False,
    )


@escaped
def state_view(state: Doc) -> Group:
    """``state``: the nodes and the tasks at one seq."""
    tasks = state.get("tasks") or []
    which = (
        "tasks" if state.get("includes_ended_tasks") else "tasks not ended (--all for every task)"
    )
    parts: list[RenderableType] = [Text(f"state at seq {state.get('seq', '?')}", style="bold")]
    nodes = state.get("nodes") or []
    parts.append(node_table(nodes) if nodes else Text("no nodes"))
    parts.append(Text(f"\n{len(tasks)} {which}", style="bold"))
    if tasks:
        parts.append(task_table(tasks))
    return Group(*parts)


@escaped
def diff_view(change: Doc) -> Group:
    """``state diff A B``: tasks and nodes that appeared, changed or disappeared."""
    parts: list[RenderableType] = [
        Text(f"from seq {change.get('from_seq', '?')} to seq {change.get('to_seq', '?')}")
    ]
    tasks = _table("", "TASK ID", "STATE", "NODE")
    for sign, key in (("+", "tasks_added"), ("~", "tasks_changed"), ("-", "tasks_removed")):
        for task in change.get(key) or []:
            tasks.add_row(
                sign,
                str(task.get("task_id", "?")),
                _from_to(task.get("state_from"), task.get("state_to")),
                _from_to(task.get("node_from"), task.get("node_to")),
            )
    nodes = _table("", "NODE", "ONLINE", "CORES USED", "MEMORY USED", "GPUS USED")
    for sign, key in (("+", "nodes_added"), ("~", "nodes_changed"), ("-", "nodes_removed")):
        for node in change.get(key) or []:
            nodes.add_row(
                sign,
                str(node.get("node", "?")),
                _from_to(node.get("online_from"), node.get("online_to")),
                _from_to(node.get("allocated_cores_from"), node.get("allocated_cores_to")),
                _from_to(
                    node.get("allocated_memory_bytes_from"), node.get("allocated_memory_bytes_to")
                ),
                _from_to(node.get("allocated_gpus_from"), node.get("allocated_gpus_to")),
            )
    if tasks.row_count:
        parts.append(tasks)
    if nodes.row_count:
        parts.append(nodes)
    if not tasks.row_count and not nodes.row_count:
        parts.append(Text("no change"))
    return Group(*parts)


def _from_to(before: Any, after: Any) -> str:
    if before == after:
        return _word(after)
    return f"{_word(before)} → {_word(after)}"


def _word(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


@escaped
def audit_view(report: Doc) -> Group:
    """``audit verify``: OK with the count, or each problem at its seq."""
    checked = report.get("checked", "?")
    # With a watermark (``--db``): what it skipped and where it now stands.
    note = [Text(str(report["watermark"]), "dim")] if report.get("watermark") else []
    if report.get("ok"):
        ok = Text(f"OK: {checked} events, hash chain and invariants verified", "green")
        return Group(ok, *note)
    table = _table("SEQ", "CHECK", "PROBLEM")
    for problem in report.get("problems") or []:
        table.add_row(
            str(problem.get("seq", "?")), str(problem.get("kind", "?")), Text(problem["message"])
        )
    head = Text(f"FAIL at seq {report.get('first_bad_seq')} ({checked} events checked)", "red")
    return Group(head, table, *note)


@escaped
def rows_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """SQL results and reports: one column per result column."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(str(column), overflow="fold")
    for row in rows:
        table.add_row(*("NULL" if value is None else _cell(value) for value in row))
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
