"""Packaging (issue 18): the wheel, its console scripts, ``--version``, shell completion,
and the agent without the optional ``gpu`` extra (nvidia-ml-py).

The wheel test builds the wheel from a copy of the sources (so nothing is written into
the checkout), installs it into a fresh virtual environment without its dependencies,
and lends it this environment's packages through a ``.pth`` line: that adds the
directory to ``sys.path`` without running the ``.pth`` files in it, so the editable
install's finder (which would import the checkout) stays out, and every module the
scripts import must come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.hakuriver import VERSION
from cli.hakuriver.commands import run

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = sorted(PYPROJECT["project"]["scripts"])
PIP = (sys.executable, "-m", "pip", "--quiet")
PACKAGES = ("events", "projections", "control_plane", "node_agent", "replay_tools", "cli")


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel installed; this environment's packages lent to it."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = root / "wheels"
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        cwd=root,
        timeout=120,
    )
    (wheel,) = wheels.glob("hakuriver-*.whl")
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [*PIP, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        cwd=root,
        timeout=120,
    )
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "lent-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield venv


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HAKURIVER_"))}
    env["HOME"] = os.environ.get("HOME", "/root")
    return env


def test_the_wheel_installs_and_every_console_script_runs(clean_venv: Path, tmp_path: Path) -> None:
    python = clean_venv / "bin" / "python"
    # The packages, the dashboard's files and the version come from the installed wheel
    probe = subprocess.run(
        [
            python,
            "-c",
            "import cli, control_plane.dashboard as d, importlib.metadata as m, pathlib;"
            "print(cli.__file__); print(d.__file__);"
            "print(sorted(p.name for p in (pathlib.Path(d.__file__).parent / 'static').iterdir()));"
            "print(m.version('hakuriver'))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    cli_file, dashboard_file, static, version = probe.stdout.splitlines()
    assert Path(cli_file).is_relative_to(clean_venv), cli_file
    assert Path(dashboard_file).is_relative_to(clean_venv), dashboard_file
    assert static == str(
        sorted(p.name for p in (REPO / "control_plane/dashboard/static").iterdir())
    )
    assert version == VERSION
    # Every console script of pyproject's [project.scripts] is there and answers --help
    missing = [name for name in SCRIPTS if not (clean_venv / "bin" / name).is_file()]
    assert missing == []
    runs = {
        name: subprocess.Popen(
            [clean_venv / "bin" / name, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env=clean_env(),
        )
        for name in SCRIPTS
    }
    for name, process in runs.items():
        out, err = process.communicate(timeout=90)
        assert process.returncode == 0, (name, err.decode()[-2000:])
        assert b"usage" in out.lower() or b"Usage" in out, (name, out[:300])
    # --version is the distribution's
    done = subprocess.run(
        [clean_venv / "bin" / "hakuriver", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    assert done.stdout == f"{VERSION}\n"


def test_the_wheel_holds_the_dashboard_and_no_tests(clean_venv: Path) -> None:
    (wheel,) = clean_venv.parent.glob("wheels/hakuriver-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    static = REPO / "control_plane/dashboard/static"
    expected = {
        f"control_plane/dashboard/static/{p.relative_to(static).as_posix()}"
        for p in static.rglob("*")
        if p.is_file()
    }
    assert expected and expected <= set(names)
    assert not [n for n in names if n.startswith("tests/")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{name} = " in text for name in SCRIPTS)
    metadata = zipfile.ZipFile(wheel).read(entry_points.replace("entry_points.txt", "METADATA"))
    assert b"Provides-Extra: gpu" in metadata
    assert b'Requires-Dist: nvidia-ml-py>=12; extra == "gpu"' in metadata


def test_version_answers_from_the_console_script_entry() -> None:
    # main.py answers --version without cyclopts; the full command tree says the same
    done = subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.stdout == f"{VERSION}\n"


# Each shell's syntax checker, and a completion asked of the script where it can be.
BASH_COMPLETE = """
source "$1"
COMP_WORDS=(hakuriver init service --r); COMP_CWORD=3
COMP_LINE="hakuriver init service --r"; COMP_POINT=${#COMP_LINE}
_hakuriver hakuriver --r service
printf '%s\\n' "${COMPREPLY[@]}"
complete -p hakuriver
"""


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_for_each_shell(
    shell: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the script `hakuriver completion SHELL` prints
    assert run(["completion", shell]) == 0
    script = capsys.readouterr().out
    # It knows the commands, the lazy ones and their options included
    option = "-l runner" if shell == "fish" else "--runner"  # fish names options bare
    for word in ("service", option, "submit", "create-tar", "completion"):
        assert word in script, word
    path = tmp_path / f"hakuriver.{shell}"
    path.write_text(script)
    program = shutil.which(shell)
    if program is None:
        pytest.skip(f"{shell} is not installed here: its script's syntax is not checked")
    check = {"bash": ["-n"], "zsh": ["-n"], "fish": ["--no-execute"]}[shell]
    done = subprocess.run([program, *check, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if shell == "bash":
        # And bash, having sourced it, completes `init service --r` to --runner
        done = subprocess.run(
            [program, "-c", BASH_COMPLETE, "bash", str(path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["--runner", "complete -F _hakuriver hakuriver"]


def test_completion_refuses_an_unknown_shell(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["completion", "tcsh"]) == 2
    assert 'Invalid value "tcsh"' in capsys.readouterr().err


# Without the gpu extra: `import pynvml` fails (sys.modules[name] = None makes it so).
NO_PYNVML = """
import sys
sys.modules["pynvml"] = None
import node_agent.agent, node_agent.session
from node_agent import probes
machine = probes.probe_machine()
print(len(machine.gpus), len(probes.probe_gpus()), len(probes.probe_usage().gpus))
"""


def test_the_probes_report_no_gpu_without_nvidia_ml_py() -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_PYNVML],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "0", "0"]


def test_an_agent_without_nvidia_ml_py_joins_and_runs_tasks(tmp_path: Path) -> None:
    # Given an agent process in which `import pynvml` fails (and a marker that says so)
    from support.cluster import running_cluster

    blocker = tmp_path / "no-pynvml"
    blocker.mkdir()
    marker = tmp_path / "blocked"
    (blocker / "sitecustomize.py").write_text(
        "import pathlib, sys\n"
        "sys.modules['pynvml'] = None\n"
        f"pathlib.Path({str(marker)!r}).write_text('blocked')\n"
    )
    with running_cluster(tmp_path, agents=()) as cluster:
        cluster.start_agent("n1", env={"PYTHONPATH": f"{blocker}:{REPO}"})
        assert marker.exists()
        # Then it is online with no GPU, and runs a task
        node = cluster.node("n1")
        assert node is not None and node["online"] and node["gpus"] == []
        (task_id,) = cluster.submit("echo", "no gpu extra")
        assert cluster.wait_state(task_id)["state"] == "completed"
