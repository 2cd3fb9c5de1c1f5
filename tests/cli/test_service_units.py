"""``hakuriver init service``: the systemd units, checked by systemd's own reader.

``systemd-analyze verify`` loads each unit as the service manager would (it need not
run as PID 1) and fails on a bad setting or an ExecStart whose program is missing; its
debug dump shows the command line and environment as systemd read them, so a path with
blanks, quotes or ``%`` is checked to arrive as written. Without ``systemd-analyze``
these tests skip, and fail under ``HAKURIVER_REQUIRE_SYSTEMD=1`` (CI installs it).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
from support.attacker import NOBODY, as_nobody, nobody_python

from cli.hakuriver import seeds
from cli.hakuriver.commands import run
from cli.hakuriver.config import DEFAULT_CONFIG
from cli.hakuriver.service import (
    ServiceError,
    destination,
    environment_value,
    exec_word,
    write_service,
)

REPO = Path(__file__).resolve().parents[2]
# Blanks, a specifier, a variable, both quotes and a backslash: each must reach the process.
AWKWARD = "my cfg %h 100%% $HOME \"q\" 'x' back\\slash"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is not None:
        return found
    message = "systemd-analyze is not installed here (Debian: apt install systemd)"
    if os.environ.get("HAKURIVER_REQUIRE_SYSTEMD") == "1":
        pytest.fail(f"{message}, and HAKURIVER_REQUIRE_SYSTEMD=1 requires it")
    pytest.skip(message)


def verify(unit: Path) -> str:
    """Run ``systemd-analyze verify``; its debug dump of the unit (stdout)."""
    done = subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "debug"},
    )
    complaints = [
        line
        for line in done.stderr.splitlines()
        if unit.name in line
        and any(word in line for word in ("ignoring", "error", "not executable", "Unknown"))
    ]
    assert done.returncode == 0 and not complaints, done.stderr[-3000:]
    return done.stdout


def read_back(dump: str, unit: str) -> tuple[list[str], list[str]]:
    """The ExecStart argv and the Environment assignments of ``unit`` in a verify dump."""
    section = dump.split(f"-> Unit {unit}:", 1)[1].split("-> Unit ", 1)[0]
    argv: list[str] = []
    environment = []
    for line in section.splitlines():
        text = line.strip()
        if text.startswith("Command Line:") and not argv:
            # systemd shows `$` as `\$`; `$$` becomes one `$` when the command runs.
            words = shlex.split(text.removeprefix("Command Line:"))
            argv = [word.replace("\\$", "$").replace("$$", "$") for word in words]
        elif text.startswith("Environment:"):
            environment.append(text.removeprefix("Environment:").strip())
    return argv, environment


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A fake installation: an interpreter's directory holding an executable ``hakuriver``."""
    bin_dir = tmp_path / "venv dir %i" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "hakuriver"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    return bin_dir / "python"


def config_at(directory: Path, text: str = DEFAULT_CONFIG) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{AWKWARD}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("role", ["host", "runner"])
def test_each_unit_passes_systemd_verify_and_runs_what_was_asked(
    role: str, tmp_path: Path, installed: Path
) -> None:
    # Given a configuration file whose path needs every kind of escaping
    config = config_at(tmp_path / "conf dir")
    units = tmp_path / "units"
    # When its unit is written
    unit, lines = write_service(
        role,  # type: ignore[arg-type]
        config=config,
        output=units,
        user="nobody" if role == "host" else None,
        force=False,
        is_root=True,
        interpreter=str(installed),
    )
    assert unit == units / f"hakuriver-{role}.service"
    text = unit.read_text()
    # Then systemd accepts it and reads back the script, the role and the exact path
    dump = verify(unit)
    argv, environment = read_back(dump, unit.name)
    assert argv == [str(installed.parent / "hakuriver"), role, "--config", str(config)]
    path = next(value for value in environment if value.startswith("PATH="))
    assert path.split("=", 1)[1].split(":")[0] == str(installed.parent)
    assert "/usr/bin" in path.split(":")
    assert "Restart=on-failure" in text and "RestartSec=5" in text
    assert "After=network-online.target" in text and "Wants=network-online.target" in text
    if role == "runner":
        # docker first; the runner's tasks survive its stop; nothing they would inherit
        assert "After=network-online.target docker.service" in text
        assert "Wants=network-online.target docker.service" in text
        assert "KillMode: process" in dump
        for option in ("NoNewPrivileges", "PrivateDevices", "DevicePolicy", "ProtectSystem"):
            assert f"\n{option}=" not in text
        assert "\nUser=" not in text  # root: tasks as their owners, mount namespaces
    else:
        assert "docker.service" not in text
        assert "User=nobody" in text
        for option in ("NoNewPrivileges=yes", "ProtectSystem=full", "PrivateTmp=yes"):
            assert option in text
    # And the lines say where it went and what to run (no sudo: as root)
    assert lines[0] == f"wrote {unit}"
    assert f"  cp {shlex.quote(str(unit))} /etc/systemd/system/" in lines
    assert f"  systemctl daemon-reload && systemctl enable --now hakuriver-{role}.service" in lines


def test_a_host_whose_data_is_in_a_home_directory_keeps_home_writable(
    tmp_path: Path, installed: Path
) -> None:
    # ProtectHome=read-only would stop a host whose event log is under ~ from writing it.
    for data_dir, protected in (("~/.hakuriver", False), ("/srv/hakuriver", True)):
        config = config_at(tmp_path / data_dir.strip("/~."), f'[paths]\ndata_dir = "{data_dir}"\n')
        out = tmp_path / "out" / data_dir.strip("/~.")
        unit, _ = write_service(
            "host",
            config=config,
            output=out,
            user="nobody" if protected else "root",
            force=False,
            is_root=True,
            interpreter=str(installed),
        )
        assert ("ProtectHome=read-only" in unit.read_text()) is protected
    # A shared directory in a home directory counts too
    config = config_at(
        tmp_path / "shared", '[paths]\ndata_dir = "/srv/hr"\nshared_dir = "/home/lab/shared"\n'
    )
    unit, _ = write_service(
        "host",
        config=config,
        output=tmp_path / "out" / "shared",
        user=None,
        force=False,
        is_root=True,
        interpreter=str(installed),
    )
    assert "ProtectHome" not in unit.read_text().replace("# No ProtectHome", "")


def test_an_existing_unit_is_kept_unless_forced(
    tmp_path: Path, installed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_at(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "hakuriver-runner.service"
    existing.write_text("# edited by hand\n")
    words = ["init", "service", "--runner", "--config", str(config), "--output", str(out)]
    # When the unit is asked for again without --force: refused, the file untouched
    assert run(words) == 2
    assert existing.read_text() == "# edited by hand\n"
    assert "already exists (use --force to overwrite)" in capsys.readouterr().err
    # With --force it is replaced
    assert run([*words, "--force"]) == 0
    assert "KillMode=process" in existing.read_text()


@pytest.mark.parametrize("flags", [["--host", "--runner"], []], ids=["both", "neither"])
def test_exactly_one_of_host_and_runner(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_at(tmp_path)
    words = ["init", "service", *flags, "--config", str(config), "--output", str(tmp_path)]
    assert run(words) == 2
    assert "error: give one of --host or --runner" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.service"))


def test_a_missing_configuration_is_refused_with_how_to_make_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.toml"
    words = ["init", "service", "--host", "--config", str(missing), "--output", str(tmp_path)]
    assert run(words) == 2
    err = capsys.readouterr().err
    assert f"{missing} does not exist" in err
    assert f"hakuriver init config --path {missing}" in err
    assert not list(tmp_path.glob("*.service"))


def test_the_seed_spelling_writes_the_same_unit(tmp_path: Path) -> None:
    # Seed 001: `hakuriver.init service --runner [--config /path/to/runner.toml]`
    config = config_at(tmp_path)
    code = seeds.init_main(
        ["service", "--runner", "--config", str(config), "--output", str(tmp_path)]
    )
    assert code == 0
    assert "KillMode=process" in (tmp_path / "hakuriver-runner.service").read_text()


def test_values_are_written_in_systemd_syntax() -> None:
    assert exec_word("/usr/bin/hakuriver") == "/usr/bin/hakuriver"
    assert exec_word("/a b/%h.toml") == '"/a b/%%h.toml"'
    assert exec_word("/x$HOME") == "/x$$HOME"
    assert exec_word('/q"\\') == '"/q\\"\\\\"'
    assert environment_value("PATH", "/a%:/b c") == '"PATH=/a%%:/b c"'
    with pytest.raises(ServiceError, match="control character"):
        exec_word("/etc/new\nline.toml")


def test_where_the_unit_goes() -> None:
    assert destination(None, is_root=True) == Path("/etc/systemd/system")
    assert destination(None, is_root=False) == Path.cwd()
    assert destination(Path("/tmp/x"), is_root=True) == Path("/tmp/x")


def test_as_a_user_the_unit_is_written_here_with_the_sudo_steps(
    request: pytest.FixtureRequest,
) -> None:
    # Given the account nobody, in a directory it may write, with a configuration
    python = nobody_python()
    same = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
    ).stdout.strip()
    if same != str(sys.version_info[:2]):
        pytest.skip(f"nobody's interpreter {python} is not this one's version")
    # (pytest's own temporary directories are root's alone: a world-readable one of ours)
    top = Path(tempfile.mkdtemp(prefix="hakuriver-unit-"))
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    top.chmod(0o755)
    here = top / "work"
    here.mkdir()
    os.chown(here, NOBODY.pw_uid, NOBODY.pw_gid)
    config = config_at(top / "conf")
    config.parent.chmod(0o755)
    # When it asks for the host's unit (the dependencies from this environment, the
    # code from this checkout: no `hakuriver` script next to that interpreter)
    deps = sysconfig.get_paths()["purelib"]
    done = subprocess.run(
        as_nobody(
            [python, "-m", "cli.hakuriver", "init", "service", "--host", "--config", str(config)]
        ),
        cwd=here,
        env={**os.environ, "PYTHONPATH": f"{REPO}:{deps}", "HOME": str(here)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # Then it is written in the current directory, and the output says how to install it
    unit = here / "hakuriver-host.service"
    assert done.stdout.splitlines()[0] == f"wrote {unit}"
    assert f"  sudo cp {unit} /etc/systemd/system/" in done.stdout
    assert (
        "  sudo systemctl daemon-reload && sudo systemctl enable --now hakuriver-host.service"
        in done.stdout
    )
    text = unit.read_text()
    assert "User=nobody" in text
    # python -m from the checkout, which the unit puts on PYTHONPATH
    argv, environment = read_back(verify(unit), unit.name)
    assert argv == [python, "-m", "cli.hakuriver", "host", "--config", str(config)]
    assert f"PYTHONPATH={REPO}" in environment
