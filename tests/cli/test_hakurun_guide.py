"""Every example of the hakurun guide (seed 004), and the README's demo, run for real.

Each command is given as the argv hakurun receives: what the shell passes
once the spans are quoted. The scripts are the fixtures, copied under the
names the guide uses.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

Run = Callable[..., subprocess.CompletedProcess[str]]
Install = Callable[..., Path]


def received(argument_lists: list[list[str]]) -> list[str]:
    """What demo_hakurun.py prints for these argument lists."""
    return [f"Arguments received: {arguments}" for arguments in argument_lists]


def test_integer_range(hakurun: Run) -> None:
    done = hakurun("echo", "Value: ", "span:{1..5}")
    assert done.returncode == 0
    assert done.stdout.splitlines() == [f"Value:  {value}" for value in range(1, 6)]
    assert done.stderr == ""


def test_list_items(hakurun: Run) -> None:
    done = hakurun("echo", "Size: ", "span:[small,medium,large]")
    assert done.stdout.splitlines() == ["Size:  small", "Size:  medium", "Size:  large"]


def test_combining_spans_runs_what_the_guide_lists(hakurun: Run) -> None:
    planned = hakurun("--dry-run", "echo", "Param", "span:{1..3}", "span:[A,B]")
    ran = hakurun("echo", "Param", "span:{1..3}", "span:[A,B]")
    pairs = ["1 A", "1 B", "2 A", "2 B", "3 A", "3 B"]
    assert planned.stdout.splitlines() == [f"echo Param {pair}" for pair in pairs]
    assert ran.stdout.splitlines() == [f"Param {pair}" for pair in pairs]


def test_basic_usage_python_script(hakurun: Run, install: Install) -> None:
    install("demo_hakurun.py", "script.py")
    done = hakurun("python", "script.py", "span:{1..3}", "span:[A,B,C]")
    assert done.returncode == 0
    assert done.stdout.splitlines() == received(
        [[n, letter] for n, letter in itertools.product("123", "ABC")]
    )


def test_basic_usage_fixed_and_expanded_arguments(hakurun: Run, install: Install) -> None:
    install("demo_hakurun.py", "process_data.py", executable=True)
    done = hakurun(
        "./process_data.py", "--input", "data.csv", "--output", "span:[output1.csv,output2.csv]"
    )
    assert done.stdout.splitlines() == received(
        [["--input", "data.csv", "--output", name] for name in ("output1.csv", "output2.csv")]
    )


def test_running_in_parallel(hakurun: Run, install: Install) -> None:
    install("demo_hakurun.py", "script.py")
    done = hakurun("--parallel", "python", "script.py", "span:{1..3}", "span:[A,B]")
    expected = [[n, letter] for n, letter in itertools.product("123", "AB")]
    assert done.returncode == 0
    assert sorted(done.stdout.splitlines()) == sorted(received(expected))
    # Each combination is labelled on stderr, stdout holding only the script's output.
    for n, letter in expected:
        assert f"] python script.py {n} {letter}\n" in done.stderr


def test_python_module_through_python_m(hakurun: Run, install: Install) -> None:
    install("my_module.py")
    done = hakurun("python", "-m", "my_module", "span:{1..3}")
    assert done.stdout.splitlines() == [f"my_module as __main__: ['{n}']" for n in "123"]


def test_python_function(hakurun: Run, install: Install) -> None:
    install("my_module.py")
    done = hakurun("my_module:my_function", "span:{1..3}")
    assert done.returncode == 0
    assert done.stdout.splitlines() == [f"my_function('{n}',)" for n in "123"]


def test_executable(hakurun: Run, install: Install) -> None:
    install("print_args.sh", "my_executable", executable=True)
    done = hakurun("./my_executable", "span:{1..3}")
    assert done.stdout.splitlines() == [f"my_executable {n}" for n in "123"]


def test_hyperparameter_tuning(hakurun: Run, install: Install) -> None:
    install("demo_hakurun.py", "train_model.py")
    done = hakurun(
        "--parallel",
        *("python", "train_model.py", "--lr", "span:[0.001,0.01,0.1]"),
        *("--batch", "span:{32,64,128}"),
    )
    expected = [
        ["--lr", lr, "--batch", batch]
        for lr, batch in itertools.product(["0.001", "0.01", "0.1"], ["32", "64", "128"])
    ]
    assert done.returncode == 0
    assert sorted(done.stdout.splitlines()) == sorted(received(expected))


def test_data_processing(hakurun: Run, install: Install) -> None:
    install("print_args.sh", "process.sh", executable=True)
    done = hakurun(
        "--parallel",
        *("./process.sh", "span:[file1.csv,file2.csv]", "--threshold", "span:{0.1,0.2,0.3}"),
    )
    expected = [
        f"process.sh {name} --threshold {threshold}"
        for name, threshold in itertools.product(["file1.csv", "file2.csv"], ["0.1", "0.2", "0.3"])
    ]
    assert sorted(done.stdout.splitlines()) == sorted(expected)


def test_testing_configurations(hakurun: Run, install: Install) -> None:
    install("print_args.sh", "test_app", executable=True)
    done = hakurun("./test_app", "--mode", "span:[debug,release]", "--threads", "span:{1,2,4,8}")
    assert done.stdout.splitlines() == [
        f"test_app --mode {mode} --threads {threads}"
        for mode, threads in itertools.product(["debug", "release"], ["1", "2", "4", "8"])
    ]


def fake_client(bin_dir: Path, log: Path) -> None:
    """A ``hakuriver.client`` on PATH that only records each argv it is called with."""
    client = bin_dir / "hakuriver.client"
    client.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(log)!r}, 'a') as log:\n"
        "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    client.chmod(0o755)


def bash(line: str, work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one shell line as a user would type it."""
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", line],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_method_1_pipeline_into_bash(
    work: Path, env: dict[str, str], bin_dir: Path, tmp_path: Path
) -> None:
    # Given a client that records its calls, and the guide's line with its spans quoted
    log = tmp_path / "submitted.jsonl"
    fake_client(bin_dir, log)
    line = (
        "hakurun echo \"hakuriver.client --target node1 -- python script.py\" 'span:{1..3}' "
        "'span:[A,B]' | bash"
    )
    # When bash runs it
    done = bash(line, work, env)
    # Then each combination was submitted once, in product order
    assert done.returncode == 0, done.stderr
    submitted = [json.loads(entry) for entry in log.read_text().splitlines()]
    assert submitted == [
        ["--target", "node1", "--", "python", "script.py", n, letter]
        for n, letter in itertools.product("123", "AB")
    ]


def test_method_1_with_dry_run_keeps_awkward_values_intact(
    work: Path, env: dict[str, str], bin_dir: Path, tmp_path: Path
) -> None:
    # The documented variant: --dry-run quotes each argument, so bash splits nothing.
    log = tmp_path / "submitted.jsonl"
    fake_client(bin_dir, log)
    line = (
        "hakurun --dry-run hakuriver.client --target node1 -- python script.py "
        "'span:[a b,$HOME;x]' | bash"
    )
    done = bash(line, work, env)
    assert done.returncode == 0, done.stderr
    submitted = [json.loads(entry) for entry in log.read_text().splitlines()]
    assert submitted == [
        ["--target", "node1", "--", "python", "script.py", value] for value in ("a b", "$HOME;x")
    ]


def test_method_1_output_is_only_the_commands(hakurun: Run) -> None:
    command = "hakuriver.client --target node1 -- python script.py"
    expected = [f"{command} {n} {letter}" for n, letter in itertools.product("123", "AB")]
    sequential = hakurun("echo", command, "span:{1..3}", "span:[A,B]")
    parallel = hakurun("--parallel", "echo", command, "span:{1..3}", "span:[A,B]")
    assert sequential.stdout.splitlines() == expected
    assert sequential.stderr == ""
    assert sorted(parallel.stdout.splitlines()) == sorted(expected)


def test_method_1_unquoted_in_bash_is_refused_with_a_hint(
    work: Path, env: dict[str, str], bin_dir: Path, tmp_path: Path
) -> None:
    # bash brace-expands the line as the guide prints it; hakurun must not submit "span:1".
    log = tmp_path / "submitted.jsonl"
    fake_client(bin_dir, log)
    line = (
        'hakurun echo "hakuriver.client --target node1 -- python script.py" '
        "span:{1..3} span:[A,B] | bash"
    )
    done = bash(line, work, env)
    assert done.returncode == 2
    assert "'span:1'" in done.stderr
    assert "quote the span" in done.stderr
    assert not log.exists()


def test_testing_locally_first(hakurun: Run) -> None:
    done = hakurun("--parallel", "echo", "python", "script.py", "span:{1..3}", "span:[A,B]")
    assert sorted(done.stdout.splitlines()) == sorted(
        f"python script.py {n} {letter}" for n, letter in itertools.product("123", "AB")
    )


def test_limiting_combinations_with_a_subset(hakurun: Run, install: Install) -> None:
    install("demo_hakurun.py", "script.py")
    done = hakurun("python", "script.py", "span:{1..3}", "span:{1..3}", "span:{1..3}")
    assert done.stdout.splitlines() == received(
        [list(combination) for combination in itertools.product("123", repeat=3)]
    )


def test_basic_parameter_sweep_output(hakurun: Run, install: Install) -> None:
    install("demo_hakurun.py")
    done = hakurun("python", "demo_hakurun.py", "span:{1..3}", "span:[A,B]")
    assert done.stdout == (
        "Arguments received: ['1', 'A']\n"
        "Arguments received: ['1', 'B']\n"
        "Arguments received: ['2', 'A']\n"
        "Arguments received: ['2', 'B']\n"
        "Arguments received: ['3', 'A']\n"
        "Arguments received: ['3', 'B']\n"
    )


def test_machine_learning_example(hakurun: Run, install: Install) -> None:
    install("train_model.py")
    done = hakurun(
        "--parallel",
        *("python", "train_model.py", "span:[0.001,0.01,0.1]", "span:{32,64}", "span:{10,20}"),
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    blocks = [printed[i : i + 2] for i in range(0, len(printed), 2)]
    expected = [
        [
            f"Training model with lr={float(lr)}, batch={batch}, epochs={epochs}",
            f"Accuracy: {min(float(lr) * int(batch) * int(epochs) / 100, 0.95):.2f}",
        ]
        for lr, batch, epochs in itertools.product(
            ["0.001", "0.01", "0.1"], ["32", "64"], ["10", "20"]
        )
    ]
    # Each run's two lines stay together, whatever order the runs finish in.
    assert sorted(blocks) == sorted(expected)


def test_readme_demo_runs_four_processes_in_parallel(hakurun: Run, install: Install) -> None:
    install("demo_hakurun_pid.py", "demo_hakurun.py")
    done = hakurun(
        *("--parallel", "python", "./demo_hakurun.py"),
        *("span:{1..2}", "fixed_arg", "span:[input_a,input_b]"),
    )
    parsed = [
        re.fullmatch(r"Args: (\[.*\]), PID: (\d+)", line) for line in done.stdout.splitlines()
    ]
    matches = [match for match in parsed if match is not None]
    assert len(matches) == len(parsed) == 4
    assert sorted(ast.literal_eval(match[1]) for match in matches) == sorted(
        [n, "fixed_arg", name] for n, name in itertools.product("12", ["input_a", "input_b"])
    )
    assert len({match[2] for match in matches}) == 4
