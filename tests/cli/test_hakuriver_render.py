"""Rendering the API's documents: the tables and panels show what users look for.

The documents are built from the API's own Structs (``control_plane/views.py``)
and sent through JSON, so a renamed field breaks these tests, not the CLI.
"""

from __future__ import annotations

import io
import subprocess
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console, RenderableType

from cli.hakuriver import render
from control_plane.views import NodeOut, TaskOut
from events.types import GpuInfo, GpuUsage, Mount, NumaNode


def rendered(renderable: RenderableType) -> str:
    """The plain text a renderable prints on a wide console."""
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def document(struct: msgspec.Struct) -> dict[str, Any]:
    """A view as the API sends it: through JSON."""
    result: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(struct))
    return result


TASK = TaskOut(
    task_id="01a1fd8a-7873-72ea-bc3a-10258893ee91",
    number=1207,
    batch_id="01a1fd8a-7873-72e9-b719-d9fe5abef44c",
    task_type="command",
    state="failed",
    command="python",
    args=["train.py", "--note", "two words"],
    env={"DEBUG": "1"},
    cores=2,
    memory_bytes=2_000_000_000,
    gpu_ids=[0, 1],
    numa_id=0,
    container="NULL",
    privileged=False,
    mounts=[Mount(host_path="/data", container_path="/mnt", read_only=True)],
    target="n1:0::0,1",
    node="n1",
    owner="alice",
    name="sweep-1",
    submitted_at="2026-11-21T09:57:52.885128Z",
    placed_at="2026-11-21T09:57:52.887532Z",
    started_at="2026-11-21T09:57:52.902180Z",
    finished_at="2026-11-21T09:59:07.906696Z",
    exit_code=3,
    message="ended with exit status 3",
    pid=14477,
    container_id=None,
    kill_requested_by=None,
    queue_wait_s=0.017,
    run_time_s=75.0,
)

NODE = NodeOut(
    name="gpu1",
    address="10.0.0.7",
    online=True,
    executors=["process", "docker"],
    cores=8,
    free_cores=6,
    memory_bytes=16_000_000_000,
    free_memory_bytes=12_000_000_000,
    numa=[NumaNode(id=0, cpus=(0, 1, 2, 3), memory_bytes=8_000_000_000)],
    gpus=[
        GpuInfo(id=0, name="RTX 4090", memory_bytes=24_000_000_000),
        GpuInfo(id=1, name="RTX 4090"),
    ],
    free_gpus=[1],
    cpu_percent=37.5,
    memory_percent=25.0,
    memory_used_bytes=4_000_000_000,
    gpu_usage=[
        GpuUsage(
            id=0, utilization_percent=93.0, memory_used_bytes=20_000_000_000, temperature_c=71.0
        )
    ],
    temperatures={"cpu": 55.0},
    running_task_ids=["01a1fd8a-7873-72ea-bc3a-10258893ee91"],
    running_task_numbers=[1207],
    task_ids=["01a1fd8a-7873-72ea-bc3a-10258893ee91"],
    registered_at="2026-11-21T09:00:00Z",
    last_seen="2026-11-21T09:59:59.5Z",
)


def test_task_list_and_status_show_what_users_look_for() -> None:
    task = document(TASK)
    table = rendered(render.task_table([task]))
    assert table.splitlines()[1].split()[0] == "1207"  # the number is the task's ID
    assert "failed" in table
    assert "n1:0::0,1" in table
    assert "2G" in table
    assert "[sweep-1] python train.py --note 'two words'" in table
    detail = rendered(render.task_detail(task))
    assert detail.startswith("╭─ task 1207 ")
    for text in (
        f"id                 {task['task_id']}",
        "exit code          3",
        "NULL (plain process)",
        "/data:/mnt:ro",
        "DEBUG=1",
        "1m15s",
    ):
        assert text in detail


def test_node_list_shows_free_over_total() -> None:
    table = rendered(render.node_table([document(NODE)])).splitlines()
    assert table[0].split() == [
        "NODE",
        "STATUS",
        "CORES",
        "MEMORY",
        "NUMA",
        "GPUS",
        "CPU%",
        "MEM%",
        "TASKS",
    ]
    assert table[1].split() == ["gpu1", "online", "6/8", "12G/16G", "1", "1/2", "38%", "25%", "1"]


def test_node_health_shows_gpu_usage_numa_and_temperatures() -> None:
    health = {
        "status": "ok",
        "last_seq": 9,
        "nodes_online": 1,
        "nodes_total": 2,
        "tasks": {"running": 1},
        "anomalies": 0,
    }
    text = rendered(render.health_report(health, [document(NODE)]))
    for expected in (
        "nodes online  1/2",
        "running 1",
        "0: 0-3 (4 CPUs, 8G)",
        "cpu 55°C",
        "RTX 4090",
        "71°C",
        "20G/24G",
        "93%",
    ):
        assert expected in text


def test_a_degraded_cluster_says_why() -> None:
    reason = "the event log cannot be written (commit failed: no space left on device)"
    text = rendered(render.health_panel({"status": "degraded", "reason": reason}))
    rows = [" ".join(line.strip("│ ").split()) for line in text.splitlines()]
    assert "status degraded" in rows
    assert f"why {reason}" in rows


def test_rendering_survives_sparse_documents() -> None:
    for renderable in (
        render.task_table([{}]),
        render.task_detail({"task_id": "x"}),
        render.node_table([{}]),
        render.node_detail({"name": "n", "gpus": [{"id": 0}]}),
        render.health_panel({}),
    ):
        assert rendered(renderable)
    assert render.final_line({"task_id": "t", "state": "lost"}) == "t  lost"


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "-"),
        (0, "0B"),
        (999, "999B"),
        (1000, "1K"),
        (1_500_000, "1.5M"),
        (16_000_000_000, "16G"),
        (2**30, "1.1G"),
    ],
)
def test_sizes_are_1000_based_like_memory_options(size: int | None, text: str) -> None:
    assert render.human_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.004, "4ms"), (2.5, "2.5s"), (75.3, "1m15s"), (3700, "1h01m")],
)
def test_durations_read_at_a_glance(seconds: float | None, text: str) -> None:
    assert render.human_duration(seconds) == text


# --- task list fits the terminal; commands quoted as a shell reads them (issue 11) ------

LONG = dict(
    document(TASK),
    number=12345,
    state="killed_oom",
    node="gpu-node-3",
    numa_id=None,
    gpu_ids=[],
    name=None,
    command="sh",
    args=["-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 1; done; echo finished"],
)


def table_lines(width: int) -> list[str]:
    """``task list`` of three tasks as printed on a terminal ``width`` columns wide."""
    tasks = [LONG, document(TASK), dict(document(TASK), number=7, exit_code=None, name=None)]
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(render.task_table(tasks, width))
    return [line.rstrip() for line in console.export_text().splitlines()]


@pytest.mark.parametrize(
    ("width", "columns"),
    [
        (100, ["ID", "STATE", "NODE", "CORES", "MEMORY", "SUBMITTED (UTC)", "EXIT"]),
        (80, ["ID", "STATE", "NODE", "SUBMITTED (UTC)", "EXIT"]),
        (72, ["ID", "STATE", "NODE", "SUBMITTED", "EXIT"]),
        (64, ["ID", "STATE", "NODE", "EXIT"]),
        (60, ["ID", "STATE", "EXIT"]),
        (40, ["ID", "STATE"]),
    ],
)
def test_task_list_fits_the_width_dropping_the_least_important_columns(
    width: int, columns: list[str]
) -> None:
    lines = table_lines(width)
    assert max(map(len, lines)) <= width
    assert [name.strip() for name in lines[0].split("  ") if name.strip()] == [
        *columns,
        "NAME / COMMAND",
    ]
    # Nothing of the command is lost: it wraps in its column
    text = " ".join(" ".join(lines).split())
    assert "echo finished'" in text and "12345" in text
    assert "[sweep-1] python train.py --note 'two words'" in text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="ab ;|&<>()*?#~$`\"'\\\n=-{}[]!%", max_size=6), max_size=4))
def test_a_command_line_is_what_a_shell_runs(args: list[str]) -> None:
    line = render.command_line({"command": "printf", "args": ["<%s>", *args]})
    done = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True)
    assert done.stdout == "".join(f"<{arg}>" for arg in args) or (not args and done.stdout == "<>")


def test_counts_read_as_english() -> None:
    assert [render.plural(n, "task") for n in (0, 1, 2)] == ["0 tasks", "1 task", "2 tasks"]
    assert render.command_line({"command": "python3", "args": ["-c", 'print("hi")']}) == (
        "python3 -c 'print(\"hi\")'"
    )
