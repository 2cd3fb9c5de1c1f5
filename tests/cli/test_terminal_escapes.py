"""Nothing a user or a node chose reaches the terminal raw: escapes print as text.

Issue 14, finding 10: a task named ``\\x1b]0;owned\\x07\\x1b[31mRED`` was printed raw by
``task list`` and ``task status`` (it set the terminal's title, coloured what followed),
and a name like ``[red]x[/red]`` was read as Rich markup. Names with control characters
are now refused at submit (test_submit_validation.py), but arguments, env values,
messages and logs written before still hold them: every human output escapes them.

The end-to-end case runs the real ``hakuriver`` CLI as a subprocess against a real host.
"""

from __future__ import annotations

import inspect
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from support.cluster import REPO, Cluster, running_cluster

from cli.hakuriver import docker, history_render, identity_render, invocation, output, render

pytestmark = pytest.mark.timeout(180)

EVIL = "\x1b]0;owned\x07\x1b[31mRED"
MARKUP = "[red]x[/red]"
BIDI = "safe\u202etxt.exe"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, int]]:
    root = tmp_path_factory.mktemp("escapes")
    # No agent: the task stays queued, which is all the outputs need.
    with running_cluster(root, agents=()) as cluster:
        answer = cluster.http.post(
            "/api/tasks",
            json={
                "command": "echo",
                "args": [EVIL, BIDI],
                "env": {"LOOK": EVIL},
                "name": MARKUP,
                "container": "NULL",
            },
        )
        assert answer.status_code == 201, answer.text
        yield cluster, answer.json()["numbers"][0]


def hakuriver(cluster: Cluster, *words: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", *words],
        env={**cluster.env(), "COLUMNS": "300"},
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "words",
    [
        ("task", "list"),
        ("task", "status", "{n}"),
        ("task", "history", "{n}"),
        ("why", "{n}"),
        ("events", "tail", "--all"),
        ("state", "--all"),
    ],
)
def test_the_cli_prints_control_characters_as_escapes(
    host: tuple[Cluster, int], words: tuple[str, ...]
) -> None:
    cluster, number = host
    done = hakuriver(cluster, *(w.format(n=number) for w in words))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    shown = done.stdout
    # No byte that drives a terminal, no invisible reordering...
    assert b"\x1b" not in shown and b"\x07" not in shown, shown
    assert "\u202e".encode() not in shown
    # ...but the text, escaped, where the command shows it.
    if words[:2] in (("task", "list"), ("task", "status")):
        assert b"\\x1b]0;owned\\x07\\x1b[31mRED" in shown, shown
        assert MARKUP.encode() in shown  # literally, not read as markup
        assert b"safe\\u202etxt.exe" in shown


def test_an_error_echoing_what_was_typed_is_escaped_too(host: tuple[Cluster, int]) -> None:
    cluster, _ = host
    done = hakuriver(cluster, "task", "status", "nosuch" + EVIL)
    assert done.returncode == 2
    assert b"\x1b" not in done.stderr and b"\x07" not in done.stderr, done.stderr
    assert b"error:" in done.stderr


def test_json_output_keeps_the_text_escaped_and_valid(host: tuple[Cluster, int]) -> None:
    cluster, number = host
    done = hakuriver(cluster, "task", "status", str(number), "--json")
    assert done.returncode == 0
    assert b"\x1b" not in done.stdout and "\u202e".encode() not in done.stdout
    document = json.loads(done.stdout)
    assert document["args"] == [EVIL, BIDI] and document["name"] == MARKUP


# -- the helper, and that every renderer uses it ---------------------------------------------


def test_printable_escapes_controls_and_invisibles_only() -> None:
    assert output.printable(EVIL) == "\\x1b]0;owned\\x07\\x1b[31mRED"
    assert output.printable("a\x9bb\x7f") == "a\\x9bb\\x7f"  # C1 CSI, DEL
    assert output.printable(BIDI) == "safe\\u202etxt.exe"
    assert output.printable("tab\there\nline") == "tab\\there\\nline"
    assert output.printable("tab\there\nline", keep_lines=True) == "tab\there\nline"
    assert output.printable("训练 ✓ é [red]") == "训练 ✓ é [red]"


_HELPERS = {
    # Pure formatting of numbers and times, or of what a renderer already escaped.
    "human_size",
    "human_duration",
    "human_time",
    "state_text",
    "plural",
    "command_line",
    "task_ref",
    "task_label",
    "stamp_us",
    "token_state",
    "escaped",
}


@pytest.mark.parametrize("module", [render, history_render, identity_render])
def test_every_public_renderer_escapes_what_it_is_given(module: ModuleType) -> None:
    functions = [
        (name, fn)
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == module.__name__
    ]
    assert functions
    unescaped = [
        name for name, fn in functions if name not in _HELPERS and not getattr(fn, "escaped", False)
    ]
    assert not unescaped, f"renderers that print documents unescaped: {unescaped}"


def test_rendered_documents_hold_no_control_characters() -> None:
    task = {"task_id": "t", "number": 1, "name": MARKUP, "command": EVIL, "args": [BIDI]}
    node = {"name": EVIL, "online": True, "gpus": [{"id": 0, "name": EVIL}]}
    for renderable in (
        render.task_table([task]),
        render.task_detail({**task, "message": EVIL, "env": {EVIL: EVIL}}),
        render.node_table([node]),
        render.node_detail(node),
        history_render.rows_table([EVIL], [[EVIL]]),
        identity_render.user_table([{"name": EVIL, "created_by": MARKUP}]),
        docker._container_table(
            [{"name": EVIL, "status": "x", "image": MARKUP, "container": "c", "created": None}]
        ),
    ):
        printed = _shown(renderable)
        assert "\x1b" not in printed and "\u202e" not in printed, printed
    assert MARKUP in _shown(render.task_detail(task))


def test_show_escapes_even_what_a_renderer_forgot() -> None:
    table = Table()
    table.add_column(EVIL)
    table.add_row(Text(EVIL), MARKUP)
    printed = _shown(Panel(table, title=Text(EVIL)))
    assert "\x1b" not in printed and "\x07" not in printed
    assert "\\x1b]0;owned" in printed and MARKUP in printed


def _shown(renderable: object) -> str:
    """What ``show`` writes for ``renderable`` (to a pipe: no colours)."""
    buffer = io.StringIO()
    original = sys.stdout
    sys.stdout = buffer
    try:
        invocation.show(renderable)  # type: ignore[arg-type]
    finally:
        sys.stdout = original
    return buffer.getvalue()
