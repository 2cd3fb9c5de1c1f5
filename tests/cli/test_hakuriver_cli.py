"""The hakuriver CLI without a cluster: options into requests, errors, seed spellings, init.

Commands run in-process (``main([...])`` returns the exit code). Where a command
would talk to the control plane, ``HAKURIVER_URL`` points at a port nobody listens
on, so a test can tell "refused before sending" (exit 2) from "tried to send" (exit 1).
"""

from __future__ import annotations

import json
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli.hakuriver.client import Answer, ApiError, _error_of
from cli.hakuriver.commands import app
from cli.hakuriver.config import DEFAULT_CONFIG
from cli.hakuriver.main import main
from cli.hakuriver.nodes import list_nodes
from cli.hakuriver.seeds import SeedUsageError, client_main, client_words, init_main, task_words
from cli.hakuriver.submission import SubmitOptions
from cli.hakuriver.submit_request import parse_env
from cli.hakuriver.tasks import submit
from control_plane.errors import InvalidRequest


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(autouse=True)
def nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """No real configuration, and a control plane URL that refuses connections."""
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HAKURIVER_URL", url)
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return url


def parsed(*words: str) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The command function and arguments ``hakuriver WORDS`` would call."""
    command, bound, _ = app.parse_args(list(words))
    return command, tuple(bound.args), dict(bound.kwargs)


def request_of(*words: str) -> dict[str, Any]:
    """The request body ``hakuriver task submit WORDS`` would send."""
    command, args, kwargs = parsed("task", "submit", *words)
    assert command is submit
    return (kwargs.get("options") or SubmitOptions()).request(args)


# --- task submit: options into the request -------------------------------------------


def test_every_submit_option_lands_in_the_request() -> None:
    request = request_of(
        *("--target", "node1", "--target", "node2:0", "--target", "node3::0,1"),
        *("--cores", "4", "--memory", "512M", "--env", "A=1", "--env", "B=two"),
        *("--container", "NULL", "--mount", "/data:/mnt/data:ro", "--privileged"),
        *("--owner", "alice", "--name", "sweep-1"),
        *("--", "python", "train.py", "--lr", "0.1"),
    )
    assert request == {
        "command": "python",
        "args": ["train.py", "--lr", "0.1"],
        "targets": ["node1", "node2:0", "node3::0,1"],
        "cores": 4,
        "memory": "512M",
        "env": {"A": "1", "B": "two"},
        "container": "NULL",
        "mounts": ["/data:/mnt/data:ro"],
        "privileged": True,
        "owner": "alice",
        "name": "sweep-1",
    }


def test_a_bare_submit_leaves_every_choice_to_the_host() -> None:
    assert request_of("--", "echo", "hello") == {
        "command": "echo",
        "args": ["hello"],
    }  # no owner: the host makes the authenticated user the owner


def test_words_after_the_separator_belong_to_the_command() -> None:
    request = request_of("--target", "n1", "--", "tool", "--target", "x", "--wait", "--json")
    assert request["targets"] == ["n1"]
    assert request["args"] == ["--target", "x", "--wait", "--json"]


def test_privileged_can_be_forced_either_way() -> None:
    assert request_of("--privileged", "--", "x")["privileged"] is True
    assert request_of("--no-privileged", "--", "x")["privileged"] is False
    assert "privileged" not in request_of("--", "x")


def test_wait_and_json_are_parsed_for_the_command_not_the_request() -> None:
    _, _, kwargs = parsed("task", "submit", "--wait", "--poll-interval", "0.5", "--json", "--", "x")
    assert kwargs["waiting"].wait is True
    assert kwargs["waiting"].poll_interval == 0.5
    assert kwargs["as_json"] is True


def test_env_pairs_split_at_the_first_equals_and_a_later_key_wins() -> None:
    assert parse_env(["A=1", "URL=http://x/?a=b", "A=2", "EMPTY="]) == {
        "A": "2",
        "URL": "http://x/?a=b",
        "EMPTY": "",
    }


@pytest.mark.parametrize("pair", ["FOO", "=1", " =x"])
def test_env_without_a_key_and_value_is_refused(pair: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_env(["OK=1", pair])
    assert refused.value.field == "env"
    assert repr(pair) in refused.value.message


@pytest.mark.parametrize(
    ("words", "field"),
    [
        (("--target", "n1", "--target", "n2::"), "targets[1]"),
        (("--target", "n1::0,0"), "targets[0]"),
        (("--memory", "4X"), "memory"),
        (("--mount", "/ok:/ok", "--mount", "relative:/x"), "mounts[1]"),
    ],
)
def test_malformed_options_are_refused_with_the_api_field(
    words: tuple[str, ...], field: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        request_of(*words, "--", "echo")
    assert refused.value.field == field


def test_bad_input_is_one_error_line_and_exit_2_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Exit 2, not 1: the refusal came before any attempt to reach the (absent) server.
    code = main(["task", "submit", "--target", "n1", "--target", "n2:x", "--", "echo"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("error: targets[1]: 'n2:x' is not a target")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("words", "says"),
    [
        (["task", "submit", "--target", "n1"], "nothing to run: put the command after --"),
        (["task", "submit", "--bogus", "--", "x"], "Unknown option: --bogus"),
        (["task", "submit", "--cores", "many", "--", "x"], "cores: 'many' is not a number"),
        (["task", "list", "--status", "runing"], "'runing' is not a task state"),
        (["task", "stdout", "0123456789", "--tail", "-1"], "--tail"),
        (["task", "list", "--limit", "0"], "--limit"),
        (["task", "submit", "--wait", "--poll-interval", "0", "--", "x"], "--poll-interval"),
        (["task", "explode"], 'Unknown command "explode"'),
        # Resource values that cannot work, refused before sending (issue 11)
        (["task", "submit", "--memory", "0", "--", "x"], "memory: '0' is no memory at all"),
        (["task", "submit", "--memory", "-5G", "--", "x"], "memory: '-5G' is negative"),
        (["task", "submit", "--memory=-5G", "--", "x"], "memory: '-5G' is negative"),
        (["task", "submit", "--cores", "1.5", "--", "x"], "cores: '1.5' is not a whole number"),
        (["task", "submit", "--cores", "-1", "--", "x"], "cores: '-1' is negative"),
        (["task", "submit", "--follow", "--json", "--", "x"], "follow: --follow writes"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    words: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(words)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ")
    assert says in err
    assert err.count("\n") == 1


def test_no_core_accounting_is_allowed_and_explained() -> None:
    assert request_of("--cores", "0", "--", "x")["cores"] == 0
    assert request_of("--cores", "12", "--", "x")["cores"] == 12
    help_page = help_of("task", "submit")
    assert "0: no core accounting" in help_page
    assert "more than 0" in help_page


def help_of(*words: str) -> str:
    """``hakuriver WORDS --help`` as printed to a wide pipe, spaces collapsed."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([*words, "--help"])
    return " ".join(out.getvalue().replace("│", " ").split())


def test_a_command_without_the_separator_is_told_where_the_separator_goes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Its own option (--lr) was read as task submit's: the hint rewrites the line with --
    code = main(["task", "submit", "--target", "vm", "python3", "script.py", "--lr", "0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "error: Unknown option: --lr. Put the command to run after --, as in:"
        " hakuriver task submit --target vm -- python3 script.py --lr 0.1\n"
    )
    main(["task", "submit", "--cores=2", "--env", "A=b c", "sh", "-c", "echo $A"])
    assert "as in: hakuriver task submit --cores=2 --env 'A=b c' -- sh -c 'echo $A'\n" in (
        capsys.readouterr().err
    )
    # An unknown option before any command word is just that: no hint
    assert main(["task", "submit", "--lr", "0.1", "--", "x"]) == 2
    assert capsys.readouterr().err == "error: Unknown option: --lr.\n"


# --- reaching the control plane --------------------------------------------------------


def test_no_control_plane_says_where_it_looked_and_what_to_start(
    nowhere: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["task", "list"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        f"error: cannot reach the HakuRiver control plane at {nowhere}"
        " (is `hakuriver host` or `hakuriver up` running?)\n"
    )


def test_the_url_comes_from_the_config_file_unless_hakuriver_url_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    config = tmp_path / "cluster.toml"
    config.write_text(f'[network]\nhost_reachable_address = "127.0.0.1"\nhost_port = {port}\n')
    monkeypatch.delenv("HAKURIVER_URL")
    assert main(["node", "list", "--config", str(config)]) == 1
    assert f"http://127.0.0.1:{port} " in capsys.readouterr().err
    monkeypatch.setenv("HAKURIVER_CONFIG", str(config))
    assert main(["node", "list"]) == 1
    assert f"http://127.0.0.1:{port} " in capsys.readouterr().err
    monkeypatch.setenv("HAKURIVER_URL", "http://127.0.0.1:1")
    assert main(["node", "list"]) == 1
    assert "http://127.0.0.1:1 " in capsys.readouterr().err


def test_a_named_config_file_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["task", "status", "abcdefgh", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: config file {missing} does not exist\n"


def answer(status: int, body: object) -> Answer:
    """An answer of the control plane at http://host, as the client receives one."""
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return Answer(status, "", {}, data, "http://host/api/tasks")


def test_error_answers_become_api_errors_naming_the_field_once() -> None:
    body = {"error": "invalid_request", "field": "targets[1]", "message": "unknown node 'x'"}
    error = _error_of(answer(400, body))
    assert (error.status, error.error, error.field) == (400, "invalid_request", "targets[1]")
    assert str(error) == "targets[1]: unknown node 'x'"
    assert error.bad_input
    already = {**body, "message": "targets[1]: unknown node 'x'"}
    assert str(_error_of(answer(400, already))) == str(error)
    gateway = _error_of(answer(502, "<html>Bad Gateway</html>"))
    assert isinstance(gateway, ApiError)
    assert not gateway.bad_input
    assert "502" in str(gateway)
    assert "Bad Gateway" in str(gateway)


# --- the seeds' spellings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "canonical"),
    [
        (["--status", "T1"], ["task", "status", "T1"]),
        (["status", "T1"], ["task", "status", "T1"]),
        (["--status=T1", "--json"], ["task", "status", "T1", "--json"]),
        (["--kill", "T1"], ["task", "kill", "T1"]),
        (["kill", "T1"], ["task", "kill", "T1"]),
        (["--list-nodes"], ["node", "list"]),
        (["nodes", "--json"], ["node", "list", "--json"]),
        (["--health"], ["node", "health"]),
        (["--health", "n1"], ["node", "health", "n1"]),
        (["--health", "--json"], ["node", "health", "--json"]),
        (["health", "n1"], ["node", "health", "n1"]),
        (["pause", "T1"], ["task", "pause", "T1"]),
        (["resume", "T1"], ["task", "resume", "T1"]),
        (["command", "T1", "pause"], ["task", "pause", "T1"]),
        (["command", "T1", "resume"], ["task", "resume", "T1"]),
        (["command", "T1", "kill"], ["task", "kill", "T1"]),
        (
            ["--config", "c.toml", "--status", "T1", "--json"],
            ["task", "status", "T1", "--config", "c.toml", "--json"],
        ),
        (
            ["--target", "n1", "--cores", "2", "--", "echo", "--status", "x"],
            ["task", "submit", "--target", "n1", "--cores", "2", "--", "echo", "--status", "x"],
        ),
    ],
)
def test_client_spellings_map_to_hakuriver_commands(seed: list[str], canonical: list[str]) -> None:
    assert client_words(seed) == canonical
    parsed(*canonical)  # and hakuriver accepts what they map to


def test_flag_and_subcommand_forms_call_the_same_command() -> None:
    flag = parsed(*client_words(["--kill", "T1", "--json"]))
    word = parsed(*client_words(["kill", "T1", "--json"]))
    reordered = parsed(*client_words(["command", "T1", "kill", "--json"]))
    assert flag == word == reordered
    assert flag[1] == ("T1",)
    assert parsed(*client_words(["--list-nodes"]))[0] is list_nodes


@pytest.mark.parametrize(
    ("seed", "says"),
    [
        (["--status"], "--status needs a task id"),
        (["--status", "a", "--kill", "b"], "--status and --kill cannot be used together"),
        (["--list-nodes", "--", "echo"], "--list-nodes takes no command"),
        (["--list-nodes=x"], "--list-nodes takes no value"),
        (["command", "T1", "explode"], "use: command ID status|kill|pause|resume"),
    ],
)
def test_client_spellings_that_mean_nothing_are_refused(seed: list[str], says: str) -> None:
    with pytest.raises(SeedUsageError, match=says):
        client_words(seed)


def test_task_spelling_reorders_only_the_command_form() -> None:
    assert task_words(["command", "T1", "pause"]) == ["task", "pause", "T1"]
    assert task_words(["submit", "--", "echo", "command"]) == [
        "task",
        "submit",
        "--",
        "echo",
        "command",
    ]
    assert task_words(["stdout", "T1", "--tail", "5"]) == ["task", "stdout", "T1", "--tail", "5"]


def test_client_entry_point_runs_the_translated_command(
    nowhere: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client_main([]) == 2
    assert "usage: hakuriver.client" in capsys.readouterr().out
    assert client_main(["--target", "n1", "--target", "::", "--", "echo"]) == 2
    assert capsys.readouterr().err.startswith("error: targets[1]:")
    assert client_main(["--status", "T1"]) == 1  # a status query, sent to nobody
    assert nowhere in capsys.readouterr().err
    assert client_main(["--status"]) == 2
    assert capsys.readouterr().err == "error: --status needs a task id, as in --status ID\n"


# --- init config ---------------------------------------------------------------------


def test_init_config_writes_the_default_and_never_overwrites_unasked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "conf" / "config.toml"
    assert init_main(["config", "--path", str(path)]) == 0
    assert path.read_text() == DEFAULT_CONFIG
    assert tomllib.loads(path.read_text())["network"]["host_port"] == 8000
    path.write_text("# mine\n")
    capsys.readouterr()
    assert init_main(["config", "--path", str(path)]) == 2
    assert "already exists (use --force to overwrite)" in capsys.readouterr().err
    assert path.read_text() == "# mine\n"
    assert main(["init", "config", "--path", str(path), "--force"]) == 0
    assert path.read_text() == DEFAULT_CONFIG


def test_init_config_writes_where_hakuriver_config_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "elsewhere.toml"
    monkeypatch.setenv("HAKURIVER_CONFIG", str(target))
    assert main(["init", "config"]) == 0
    assert tomllib.loads(target.read_text())["scheduler"]["policy"] == "first-fit"
