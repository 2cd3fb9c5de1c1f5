"""``hakurun --submit`` without a cluster: option splitting, dry runs, refusals.

Submitting for real is in test_hakuriver_e2e.py.
"""

from __future__ import annotations

import json
import socket

import pytest

from cli.hakurun.main import main as hakurun_main
from cli.hakurun.main import parse_options


@pytest.fixture(autouse=True)
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """A control plane URL that refuses connections: nothing here may reach a real one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HAKURIVER_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)


def test_hakurun_submit_options_end_at_the_separator() -> None:
    options = parse_options(["--submit", "--target", "n1", "--wait", "--", "echo", "--submit"])
    assert options.submit == ("--target", "n1", "--wait")
    assert options.command == ("echo", "--submit")
    assert parse_options(["--submit", "--dry-run", "--", "x"]).dry_run
    assert parse_options(["--submit", "--", "ls", "--help"]).command == ("ls", "--help")
    assert parse_options(["--submit", "--target", "n1", "--help"]).help


def test_hakurun_submit_dry_run_prints_one_request_per_combination(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = hakurun_main(
        [
            *("--dry-run", "--submit", "--target", "n1", "--env", "K=V", "--container", "NULL"),
            *("--", "python", "train.py", "span:{1..2}", "--opt", "span:[a,b]"),
        ]
    )
    requests = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [r["args"] for r in requests] == [
        ["train.py", "1", "--opt", "a"],
        ["train.py", "1", "--opt", "b"],
        ["train.py", "2", "--opt", "a"],
        ["train.py", "2", "--opt", "b"],
    ]
    for r in requests:
        assert (r["command"], r["targets"], r["env"], r["container"]) == (
            "python",
            ["n1"],
            {"K": "V"},
            "NULL",
        )


@pytest.mark.parametrize(
    ("words", "says"),
    [
        (["--submit", "--target", "n1", "echo"], "end the submit options with --"),
        (["--parallel", "--submit", "--", "echo"], "--parallel and -j run locally"),
        (["--submit", "--", "echo", "span:{1..}"], "bad span"),
        (["--submit", "--bogus", "--", "echo"], "Unknown option: --bogus"),
        (["--submit", "--target", "n1::x", "--", "echo"], "targets[0]"),
        (["--submit", "--"], "no command given"),
    ],
)
def test_hakurun_submit_refuses_bad_input_with_exit_2(
    words: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hakurun_main(words) == 2
    assert says in capsys.readouterr().err
