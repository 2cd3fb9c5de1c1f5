"""A CLI that answers at once: what ``--version`` and ``task submit`` import, and the quick
path of ``task submit`` agreeing with the full command on every word it accepts.

Timing is measured by ``make bench`` (tests/benchmarks/bench_cli.py); here the guard is
what gets imported, which does not depend on how loaded the machine is.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cyclopts import App
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.hakuriver import VERSION
from cli.hakuriver.commands import app
from cli.hakuriver.quick import OPTIONS, WAIT_OPTIONS, read_words
from cli.hakuriver.submission import SubmitOptions, WaitOptions
from cli.hakuriver.submit_request import build_request
from cli.hakuriver.tasks import submit, task_app
from control_plane.errors import InvalidRequest

REPO = Path(__file__).resolve().parents[2]
# Libraries none of these commands needs: the data stack of the history commands, the
# server side, and the HTTP client the CLI used before http.client.
NEVER = {"numpy", "pyarrow", "duckdb", "sanic", "docker", "httpx", "pandas", "websockets"}
# What a quick answer must not load either: the CLI framework and its renderer.
FRAMEWORK = {"cyclopts", "rich", "msgspec", "attrs", "docstring_parser"}

PROBE = """
import json, sys
from cli.hakuriver.main import main
code = main(sys.argv[1:])
roots = sorted({name.split(".")[0] for name in sys.modules})
sys.stdout.write("\\n" + json.dumps({"code": code, "modules": roots}) + "\\n")
"""


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def imported_by(*words: str, tmp_path: Path) -> tuple[int, set[str]]:
    """Run ``hakuriver WORDS`` in a fresh interpreter; its exit code and top-level modules."""
    env = {
        **os.environ,
        "HAKURIVER_URL": f"http://127.0.0.1:{closed_port()}",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
    }
    env.pop("HAKURIVER_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *words],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["code"], set(report["modules"])


def test_version_loads_neither_the_framework_nor_any_library(tmp_path: Path) -> None:
    code, modules = imported_by("--version", tmp_path=tmp_path)
    assert code == 0
    assert modules & (NEVER | FRAMEWORK) == set()


def test_a_plain_submit_is_sent_without_the_framework(tmp_path: Path) -> None:
    # Exit 1: it got as far as sending (to a port where nobody listens).
    words = ("task", "submit", "--cores", "0", "--memory", "1G", "--env", "A=1", "--", "true")
    code, modules = imported_by(*words, tmp_path=tmp_path)
    assert code == 1
    assert modules & (NEVER | FRAMEWORK) == set()


@pytest.mark.parametrize(
    "words",
    [
        ("task", "list"),
        ("task", "status", "12"),
        ("task", "submit", "--wait", "--", "true"),
        ("node", "list"),
    ],
)
def test_other_commands_load_no_library_they_do_not_use(
    words: tuple[str, ...], tmp_path: Path
) -> None:
    code, modules = imported_by(*words, tmp_path=tmp_path)
    assert code == 1
    assert modules & NEVER == set()


def test_the_version_is_the_packages() -> None:
    # The distribution's version is read from the constant (tests/cli/test_packaging.py
    # checks the built wheel's metadata says the same as `hakuriver --version`).
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "cli.hakuriver.VERSION"
    }
    assert VERSION.count(".") == 2


def test_lazy_commands_are_what_the_history_and_docker_modules_install() -> None:
    # Their modules are imported on use only; this keeps the list in step with them.
    from cli.hakuriver import docker, history

    root, tasks = App(name="hakuriver"), App(name="task")
    history.install(root, tasks)
    docker.install(root)

    def targets(of: App, names: list[str]) -> dict[str, Any]:
        return {name: of[name].default_command or of[name] for name in names}

    installed = [name for name in root if not name.startswith("-")]
    assert targets(app, installed) == targets(root, installed)
    assert targets(task_app, ["history"]) == targets(tasks, ["history"])


# --- the quick path reads words as the full command does -------------------------------

VALUES = [
    "n1",
    "n2:0",
    "n3::0,1",
    "n1::",
    "0",
    "4",
    "1.5",
    "-1",
    "512M",
    "0M",
    "-5G",
    "A=1",
    "NOEQ",
    "/data:/data:ro",
    "data:/x",
    "NULL",
    "alice",
    "",
    "-x",
    "/nonexistent/hakuriver.toml",
]
TOKENS = st.sampled_from(
    [
        *OPTIONS,
        *WAIT_OPTIONS,
        *VALUES,
        "--",
        "echo",
        "hi",
        "--help",
        "-h",
        "--bogus",
        "--cores=2",
        "--memory=-1G",
        "--target=n4",
        "--json=true",
        "--privileged=false",
        "--name=",
    ]
)


def outcome(build: Any) -> Any:
    """A request, or the refusal it met."""
    try:
        return build()
    except InvalidRequest as refused:
        return ("refused", str(refused))


@settings(max_examples=400, deadline=None)
@given(st.lists(TOKENS, max_size=9))
def test_what_the_quick_path_accepts_means_the_same_to_the_full_command(
    tokens: list[str],
) -> None:
    words = read_words(tokens)
    if words is None:
        return  # left to the full command: always safe
    command, bound, _ = app.parse_args(
        ["task", "submit", *tokens], exit_on_error=False, print_error=False
    )
    assert command is submit
    kwargs = bound.kwargs
    options = kwargs.get("options") or SubmitOptions()
    waiting = kwargs.get("waiting") or WaitOptions()
    assert not waiting.wait
    assert words.as_json == kwargs.get("as_json", False)
    conn = kwargs.get("conn")
    config = conn.config if conn is not None else None
    assert words.config == (str(config) if config is not None else None)
    assert words.token == (conn.token if conn is not None else None)
    quick = outcome(lambda: build_request(words.command, **words.fields))
    full = outcome(lambda: options.request(bound.args))
    assert quick == full


def test_the_quick_table_knows_every_option_of_task_submit() -> None:
    # An option added to SubmitOptions or WaitOptions must be added to quick.py's tables
    # (to OPTIONS if the quick path can send it, else to WAIT_OPTIONS).
    candidates = {
        name
        for argument in app["task"]["submit"].assemble_argument_collection()
        for name in argument.names
        if name.startswith("--") and name not in ("--help", "--version")
    }

    def accepted(name: str) -> bool:
        for words in ([name, "--", "x"], [name, "1", "--", "x"]):
            try:
                app.parse_args(["task", "submit", *words], exit_on_error=False, print_error=False)
                return True
            except Exception:
                continue
        return False

    assert {name for name in candidates if accepted(name)} == set(OPTIONS) | set(WAIT_OPTIONS)
