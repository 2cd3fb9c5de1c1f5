"""hakurun running for real: parallelism, failures, targets, arguments and Ctrl-C.

hakurun runs as a subprocess (``python -m cli.hakurun``) in a scratch
directory (see conftest.py); option parsing and dry runs also run in-process.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from cli.hakurun.main import main, parse_options
from cli.hakurun.targets import TargetError, TargetKind, resolve

Run = Callable[..., subprocess.CompletedProcess[str]]
Install = Callable[..., Path]

LABEL = re.compile(r"^\[hakurun (\d+)/(\d+)(?:: ([^\]]+))?\] (.*)$")


def labels(stderr: str) -> list[tuple[int, int, str | None, str]]:
    """The parallel labels on stderr: (index, total, failure or None, command)."""
    found = []
    for line in stderr.splitlines():
        match = LABEL.match(line)
        if match:
            found.append((int(match[1]), int(match[2]), match[3], match[4]))
    return found


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll a condition until it holds; fail the test after the deadline."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie nobody reaped has stopped running)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- parallelism ------------------------------------------------------------------


def max_overlap(state: Path) -> int:
    """The most probes that were between their start and end stamps at once."""
    events = []
    for start in state.glob("*.start"):
        end = start.with_suffix(".end")
        events.append((int(start.read_text()), 1))
        events.append((int(end.read_text()), -1))
    running = peak = 0
    for _, change in sorted(events):  # an end sorts before a start at the same instant
        running += change
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("jobs", [2, 3])
def test_parallel_runs_exactly_j_at_once(
    hakurun: Run, install: Install, work: Path, jobs: int
) -> None:
    install("probe.py")
    state = work / "state"
    state.mkdir()
    waves = f"span:{{0..{2 * jobs - 1}}}"
    done = hakurun("--parallel", "-j", str(jobs), "python", "probe.py", "state", str(jobs), waves)
    assert done.returncode == 0, done.stderr
    assert len(list(state.glob("*.end"))) == 2 * jobs
    assert max_overlap(state) == jobs


def test_sequential_runs_one_at_a_time(hakurun: Run, install: Install, work: Path) -> None:
    install("probe.py")
    state = work / "state"
    state.mkdir()
    done = hakurun("python", "probe.py", "state", "1", "span:{0..3}")
    assert done.returncode == 0, done.stderr
    assert max_overlap(state) == 1


def test_parallel_output_of_each_combination_stays_together(hakurun: Run, install: Install) -> None:
    install("chatty.py")
    done = hakurun("--parallel", "-j", "4", "python", "chatty.py", "span:[a,b,c,d]")
    assert done.returncode == 0
    out = done.stdout.splitlines()
    assert len(out) == 12
    for start in range(0, 12, 3):
        name = out[start].split()[0]
        assert out[start : start + 3] == [f"{name} line {n}" for n in (1, 2, 3)]
    # stderr: each label is followed by that combination's own stderr lines.
    err = done.stderr.splitlines()
    assert len(err) == 16
    for start in range(0, 16, 4):
        index, total, failure, command = labels(err[start])[0]
        name = command.split()[-1]
        assert (total, failure, command) == (4, None, f"python chatty.py {name}")
        assert "abcd"[index - 1] == name
        assert err[start + 1 : start + 4] == [f"{name} note {n}" for n in (1, 2, 3)]


def test_j_implies_parallel_and_must_be_positive(hakurun: Run) -> None:
    assert len(labels(hakurun("-j", "2", "echo", "span:[x,y]").stderr)) == 2
    assert len(labels(hakurun("--jobs=2", "echo", "span:[x,y]").stderr)) == 2
    for bad in (["-j", "0"], ["-j", "many"], ["-j"]):
        done = hakurun(*bad, "echo", "x")
        assert done.returncode == 2
        assert "-j" in done.stderr
        assert done.stdout == ""


# --- failures ---------------------------------------------------------------------


def test_sequential_failure_runs_the_rest_and_summarises(hakurun: Run, install: Install) -> None:
    install("my_module.py")
    done = hakurun("my_module:fail_on_b", "span:{1..2}", "span:[A,B]")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"fail_on_b({p})" for p in ("1, A", "1, B", "2, A", "2, B")]
    assert done.stderr.splitlines() == [
        "hakurun: 2 of 4 combinations failed:",
        "  [2/4] exit 3: my_module:fail_on_b 1 B",
        "  [4/4] exit 3: my_module:fail_on_b 2 B",
    ]


def test_parallel_failures_are_labelled_and_summarised(hakurun: Run) -> None:
    script = 'case "$0" in 2) exit 5;; 3) kill -9 $$;; esac; echo ok $0'
    done = hakurun("--parallel", "sh", "-c", script, "span:{1..4}")
    assert done.returncode == 1
    assert sorted(done.stdout.splitlines()) == ["ok 1", "ok 4"]
    failed = {index: failure for index, _, failure, _ in labels(done.stderr) if failure}
    assert failed == {2: "exit 5", 3: "killed by SIGKILL"}
    summary = done.stderr[done.stderr.index("hakurun: 2 of 4 combinations failed:") :]
    assert summary.splitlines()[1:] == [
        f"  [2/4] exit 5: sh -c '{script}' 2",
        f"  [3/4] killed by SIGKILL: sh -c '{script}' 3",
    ]


def test_function_exception_fails_only_its_combination(hakurun: Run, install: Install) -> None:
    install("my_module.py")
    done = hakurun("--parallel", "my_module:explode", "span:{1..3}")
    assert done.returncode == 1
    assert sorted(done.stdout.splitlines()) == ["survived 1", "survived 3"]
    assert "RuntimeError: exploded on 2" in done.stderr
    assert "[2/3] exit 1: my_module:explode 2" in done.stderr


def test_function_sees_string_arguments_and_its_argv(hakurun: Run, install: Install) -> None:
    install("my_module.py")
    done = hakurun("my_module:argv", "span:{-1..0}", "--flag")
    assert done.stdout.splitlines() == [
        "['my_module:argv', '-1', '--flag']",
        "['my_module:argv', '0', '--flag']",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("my_module:nope", "my_module has no attribute 'nope'"),
        ("my_module:NOT_CALLABLE", "'NOT_CALLABLE' is not callable"),
    ],
)
def test_function_that_cannot_be_found_fails_each_combination(
    hakurun: Run, install: Install, spec: str, message: str
) -> None:
    install("my_module.py")
    done = hakurun(spec, "span:{1..2}")
    assert done.returncode == 1
    assert done.stderr.count(message) == 2
    assert "[1/2] exit 2" in done.stderr


# --- targets ----------------------------------------------------------------------


def test_bare_module_name_runs_with_this_interpreter(hakurun: Run, install: Install) -> None:
    install("my_module.py")
    done = hakurun("my_module", "span:[x,y]")
    assert done.stdout.splitlines() == [
        "my_module as __main__: ['x']",
        "my_module as __main__: ['y']",
    ]
    planned = hakurun("--dry-run", "my_module", "span:[x,y]")
    assert planned.stdout.splitlines()[0].split() == [sys.executable, "-m", "my_module", "x"]


def test_an_executable_on_path_wins_over_a_module_of_the_same_name(
    hakurun: Run, install: Install, work: Path, bin_dir: Path
) -> None:
    (work / "echo.py").write_text("print('the echo module ran')\n")
    install("my_module.py")
    install("print_args.sh", "my_module", executable=True, into=bin_dir)
    assert hakurun("echo", "span:[hi]").stdout.splitlines() == ["hi"]
    assert hakurun("my_module", "span:[hi]").stdout.splitlines() == ["my_module hi"]


def test_resolution_order(install: Install, work: Path) -> None:
    install("my_module.py")
    (work / "pkg").mkdir()
    (work / "pkg" / "__init__.py").write_text("")
    assert resolve("echo", work).kind is TargetKind.EXECUTABLE
    assert resolve("my_module", work).kind is TargetKind.MODULE
    # Only the top-level package is looked up before running (importing runs user code).
    assert resolve("pkg.anything", work).kind is TargetKind.MODULE
    assert resolve("my_module:my_function", work).kind is TargetKind.FUNCTION
    assert resolve("my_module:Class.method", work).kind is TargetKind.FUNCTION
    for unknown in ("no_such_module", "no_such_module:f", "my_module.py", "my_module.sub"):
        with pytest.raises(TargetError):
            resolve(unknown, work)


@pytest.mark.parametrize(
    ("setup", "target", "message"),
    [
        (None, "./missing", "no such file"),
        ("plain", "./plain.sh", "not executable"),
        (None, "nothing_called_this", "not an executable on PATH, an importable module"),
        (None, "script.py", "hakurun python script.py"),
        (None, "nope_module:func", "no module 'nope_module'"),
    ],
)
def test_a_target_that_cannot_run_is_an_error_before_anything_runs(
    hakurun: Run, install: Install, setup: str | None, target: str, message: str
) -> None:
    if setup == "plain":
        install("print_args.sh", "plain.sh")
    done = hakurun(target, "span:{1..3}")
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""


# --- arguments --------------------------------------------------------------------


def test_malformed_span_is_an_error_before_anything_runs(hakurun: Run, work: Path) -> None:
    done = hakurun("touch", "ran", "span:[a,b]", "span:{1..}")
    assert done.returncode == 2
    assert "'span:{1..}' (argument 3 of the target)" in done.stderr
    assert not (work / "ran").exists()
    assert not (work / "a").exists()


def test_a_span_bash_expanded_is_refused_with_the_command_to_run_instead(
    work: Path, env: dict[str, str]
) -> None:
    # bash itself expands the unquoted braces; the hint's line, run by bash, does the sweep.
    def bash(line: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=60
        )

    typed = bash("hakurun --dry-run echo --size span:{1..3} fixed span:{C..A}")
    assert typed.returncode == 2
    assert typed.stdout == ""
    hint = typed.stderr.splitlines()
    assert "run instead:" in hint[1]
    assert hint[2] == "  hakurun --dry-run echo --size 'span:{1..3}' fixed 'span:{C..A}'"
    retyped = bash(hint[2])
    assert retyped.returncode == 0, retyped.stderr
    assert retyped.stdout.splitlines()[:4] == [
        "echo --size 1 fixed C",
        "echo --size 1 fixed B",
        "echo --size 1 fixed A",
        "echo --size 2 fixed C",
    ]
    assert len(retyped.stdout.splitlines()) == 9


def test_letter_ranges_run_for_real(hakurun: Run) -> None:
    done = hakurun("echo", "span:{a..c}", "span:{Z..Y}")
    assert done.stdout.splitlines() == ["a Z", "a Y", "b Z", "b Y", "c Z", "c Y"]
    mixed = hakurun("echo", "span:{a..3}")
    assert mixed.returncode == 2
    assert "cannot mix a letter and a number" in mixed.stderr
    assert mixed.stdout == ""


def test_non_span_arguments_pass_through_untouched(
    hakurun: Run, install: Install, work: Path
) -> None:
    install("demo_hakurun.py", "script.py")
    tricky = ["a;b", "$(touch pwned)", "`touch pwned`", "*", "|", "x > y", "--opt=span:x"]
    tricky += ["myspan:{1..2}", "", "it's", 'say "hi"', "tab\there", "~", "a\nb"]
    done = hakurun("python", "script.py", *tricky, "span:[$HOME,a b]")
    assert done.stdout.splitlines() == [
        f"Arguments received: {[*tricky, value]}" for value in ("$HOME", "a b")
    ]
    assert not (work / "pwned").exists()


def test_options_after_the_target_belong_to_the_target(hakurun: Run, install: Install) -> None:
    install("demo_hakurun.py", "script.py")
    done = hakurun("python", "script.py", "--parallel", "-j", "3", "--dry-run", "--")
    assert done.stdout.splitlines() == [
        "Arguments received: ['--parallel', '-j', '3', '--dry-run', '--']"
    ]
    assert done.stderr == ""


def test_double_dash_ends_hakuruns_options(hakurun: Run, install: Install) -> None:
    install("print_args.sh", "--odd-name", executable=True)
    assert hakurun("--", "./--odd-name", "span:[1]").stdout.splitlines() == ["--odd-name 1"]
    assert hakurun("--dry-run", "--", "echo", "--dry-run").stdout.splitlines() == ["echo --dry-run"]


def test_sequential_output_passes_through_byte_for_byte(work: Path, env: dict[str, str]) -> None:
    # Raw bytes, no newline: nothing may be decoded, added or reordered on the way.
    code = "import sys; sys.stdout.buffer.write(sys.argv[1].encode() + bytes([255, 0]))"
    raw = subprocess.run(
        [sys.executable, "-m", "cli.hakurun", "python", "-c", code, "span:[a,b]"],
        cwd=work,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert raw.stdout == b"a\xff\x00b\xff\x00"
    assert raw.stderr == b""


def test_sequential_children_read_hakuruns_stdin(hakurun: Run) -> None:
    done = hakurun("cat", "span:[-]", stdin="from stdin\n")
    assert done.stdout == "from stdin\n"


def test_dry_run_prints_shell_quoted_commands_and_runs_nothing(hakurun: Run, work: Path) -> None:
    done = hakurun("--dry-run", "--parallel", "touch", "span:[a b,c]", "it's")
    assert done.stdout.splitlines() == ["touch 'a b' 'it'\"'\"'s'", "touch c 'it'\"'\"'s'"]
    assert done.stderr == ""
    assert list(work.iterdir()) == []


# --- in-process: options and help ---------------------------------------------------


def test_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "span:{1..5}" in capsys.readouterr().out
    assert main([]) == 2
    assert "no target given" in capsys.readouterr().err
    assert main(["--paralel", "echo"]) == 2
    assert "unknown option '--paralel'" in capsys.readouterr().err
    assert main(["span:[echo,true]", "x"]) == 2
    assert "cannot be a span" in capsys.readouterr().err


def test_parse_options_stops_at_the_target() -> None:
    options = parse_options(["--parallel", "-j4", "--dry-run", "python", "-j", "2", "--parallel"])
    assert (options.parallel, options.jobs, options.dry_run) == (True, 4, True)
    assert options.command == ("python", "-j", "2", "--parallel")
    assert parse_options(["-", "x"]).command == ("-", "x")


def test_dry_run_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dry-run", "echo", "span:{2..1}", "$HOME"]) == 0
    assert capsys.readouterr().out == "echo 2 '$HOME'\necho 1 '$HOME'\n"


# --- Ctrl-C and other stop signals --------------------------------------------------


def start_hakurun(work: Path, env: dict[str, str], *arguments: str) -> subprocess.Popen[str]:
    """Start hakurun without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli.hakurun", *arguments],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_pids(state: Path) -> list[int]:
    """Every pid the running hold.py combinations wrote (theirs and their grandchild's)."""
    return [int(pid) for path in state.glob("*.pids") for pid in path.read_text().split()]


def test_ctrl_c_in_parallel_stops_every_child_and_grandchild(
    install: Install, work: Path, env: dict[str, str]
) -> None:
    # Given three running combinations, one of which ignores SIGINT, each with a
    # grandchild that ignores SIGINT
    install("hold.py")
    state = work / "state"
    state.mkdir()
    process = start_hakurun(
        work,
        env,
        "--parallel",
        "-j",
        "3",
        "python",
        "hold.py",
        "state",
        "span:{1..2}",
        "span:[default,ignore]",
    )
    try:
        wait_for(lambda: len(list(state.glob("*.pids"))) == 3, 20, "three running combinations")
        pids = read_pids(state)
        assert len(pids) == 6 and all(alive(pid) for pid in pids)
        # When Ctrl-C reaches hakurun
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # Then it exits 130, every child and grandchild is gone, and nothing else started
    assert process.returncode == 130
    wait_for(lambda: not any(alive(pid) for pid in pids), 5, "every child to be gone")
    assert len(list(state.glob("*.pids"))) == 3
    assert "interrupted by SIGINT; stopped 3 running combination(s)" in err


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_signal_in_sequential_mode_stops_the_child_and_the_sweep(
    install: Install, work: Path, env: dict[str, str], signum: int, status: int
) -> None:
    install("hold.py")
    state = work / "state"
    state.mkdir()
    process = start_hakurun(work, env, "python", "hold.py", "state", "span:{1..3}", "default")
    try:
        wait_for(lambda: len(list(state.glob("*.pids"))) == 1, 20, "the first combination")
        pids = read_pids(state)
        process.send_signal(signum)
        process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == status
    wait_for(lambda: not any(alive(pid) for pid in pids), 5, "the child and grandchild to go")
    assert [path.name for path in state.glob("*.pids")] == ["1-default.pids"]
