"""``hakuriver init service``: the systemd units, checked by systemd's own reader.

``systemd-analyze verify`` loads each unit as the service manager would (it need not
run as PID 1) and fails on a bad setting or an ExecStart whose program is missing; its
debug dump shows the command line and environment as systemd read them, so a path with
blanks, quotes or ``%`` is checked to arrive as written. Without ``systemd-analyze``
these tests skip, and fail under ``HAKURIVER_REQUIRE_SYSTEMD=1`` (CI installs it).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.attacker import NOBODY, as_nobody, nobody_python
from support.waiting import wait_until

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
from events.config import node_name

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


@pytest.fixture
def public(request: pytest.FixtureRequest) -> Path:
    """A directory every account may enter (pytest's own are root's alone, mode 0700): a
    service user other than root must be able to read its configuration."""
    top = Path(tempfile.mkdtemp(prefix="hakuriver-unit-"))
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    top.chmod(0o755)
    return top


def config_at(directory: Path, text: str = DEFAULT_CONFIG) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    path = directory / f"{AWKWARD}.toml"
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture(autouse=True)
def _no_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever runs the suite: as if not under sudo, with no Docker of their own."""
    for name in ("SUDO_USER", "HAKURIVER_CONFIG", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def account() -> Iterator[pwd.struct_passwd]:
    """A throwaway account (not in the docker group) whose home is ours to arrange."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("making an account needs root and useradd")
    name = f"hrsvc{os.getpid()}"
    home = Path(tempfile.mkdtemp(prefix="hakuriver-home-"))
    home.chmod(0o755)

    def made() -> bool:  # another process may hold /etc/passwd's lock a moment
        done = subprocess.run(
            ["useradd", "-M", "-d", str(home), "-s", "/usr/sbin/nologin", "-U", name],
            capture_output=True,
            text=True,
        )
        assert done.returncode in (0, 10), done.stderr  # 10: cannot lock, try again
        return done.returncode == 0

    wait_until(made, timeout=30)
    created = pwd.getpwnam(name)
    os.chown(home, created.pw_uid, created.pw_gid)
    try:
        yield created
    finally:
        wait_until(
            lambda: subprocess.run(["userdel", name], capture_output=True).returncode != 10,
            timeout=30,
        )
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("role", ["host", "runner"])
def test_each_unit_passes_systemd_verify_and_runs_what_was_asked(
    role: str, tmp_path: Path, public: Path, installed: Path
) -> None:
    # Given a configuration file whose path needs every kind of escaping, readable by nobody
    config = config_at(public / "conf dir")
    units = tmp_path / "units"
    # When its unit is written, with a rootless Docker's socket in the environment
    unit, lines = write_service(
        role,  # type: ignore[arg-type]
        config=config,
        output=units,
        user="nobody",
        force=False,
        is_root=True,
        interpreter=str(installed),
        environ={"DOCKER_HOST": "unix:///run/user/65534/docker 100%.sock"},
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
    assert "DOCKER_HOST=unix:///run/user/65534/docker 100%.sock" in environment
    # a refusal (exit 2) is not retried; a relative data_dir is read from the user's home
    assert "Restart=on-failure" in text and "RestartSec=5" in text
    assert "RestartPreventExitStatus=2" in text
    assert f"WorkingDirectory: {NOBODY.pw_dir}" in dump
    # Docker first for both: the host pings it once at start to choose the default
    assert "After=network-online.target docker.service" in text
    assert "Wants=network-online.target docker.service" in text
    assert "User=nobody" in text
    if role == "runner":
        # the runner's tasks survive its stop; nothing they would inherit
        assert "KillMode: process" in dump
        for option in ("NoNewPrivileges", "PrivateDevices", "DevicePolicy", "ProtectSystem"):
            assert f"\n{option}=" not in text
    else:
        for option in ("NoNewPrivileges=yes", "ProtectSystem=full", "PrivateTmp=yes"):
            assert option in text
    # And the lines say where it went and what to run (no sudo: as root)
    assert lines[0] == f"wrote {unit}"
    assert f"  cp {shlex.quote(str(unit))} /etc/systemd/system/" in lines
    assert f"  systemctl daemon-reload && systemctl enable --now hakuriver-{role}.service" in lines


def test_a_host_whose_data_is_in_a_home_directory_keeps_home_writable(
    tmp_path: Path, public: Path, installed: Path
) -> None:
    # ProtectHome=read-only would stop a host whose event log is under ~ from writing it.
    for data_dir, protected in (("~/.hakuriver", False), ("/srv/hakuriver", True)):
        config = config_at(public / data_dir.strip("/~."), f'[paths]\ndata_dir = "{data_dir}"\n')
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
    words += ["--user", "root"]
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


def test_the_seed_spelling_under_sudo_runs_the_runner_as_the_sudo_user(
    public: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Seed 001 step 4: `sudo hakuriver.init service --runner [--config /path/to/runner.toml]`
    # with the default run_tasks_as = "runner": the runner as the one who ran sudo, exactly
    # as `hakuriver.runner` by hand, never root (every task would be root).
    config = config_at(public / "conf")
    monkeypatch.setenv("SUDO_USER", "nobody")
    code = seeds.init_main(
        ["service", "--runner", "--config", str(config), "--output", str(public)]
    )
    assert code == 0, capsys.readouterr().err
    text = (public / "hakuriver-runner.service").read_text()
    assert "KillMode=process" in text and "User=nobody" in text
    # nobody is not in the docker group: container tasks will be refused there
    err = capsys.readouterr().err
    assert "warning: nobody is not in the docker group: container tasks will be refused" in err


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


def test_a_root_runner_nobody_asked_for_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given root without sudo and the default run_tasks_as = "runner" (every task as root)
    config = config_at(tmp_path / "conf")
    base = ["init", "service", "--runner", "--config", str(config), "--output", str(tmp_path)]
    unit = tmp_path / "hakuriver-runner.service"
    if os.geteuid() != 0:
        pytest.skip("the refusal is for root without sudo")
    # When no --user is given: refused, naming both ways out, and nothing written
    assert run(base) == 2
    err = capsys.readouterr().err
    assert 'run_tasks_as = "owner"' in err and "--user ACCOUNT" in err
    assert "--user root accepts tasks as root knowingly" in err
    assert not unit.exists()
    # --user root, said knowingly: root
    assert run([*base, "--user", "root"]) == 0
    assert "\nUser=" not in unit.read_text()
    # run_tasks_as = "owner": root, since it switches to the owners; --user nobody then refused
    owner = config_at(tmp_path / "owner", '[runner]\nrun_tasks_as = "owner"\n')
    words = ["init", "service", "--runner", "--config", str(owner), "--output", str(tmp_path)]
    assert run([*words, "--force"]) == 0
    assert "\nUser=" not in unit.read_text()
    capsys.readouterr()
    assert run([*words, "--force", "--user", "nobody"]) == 2
    assert "the runner must run as root to start tasks as their owners" in capsys.readouterr().err


def test_under_sudo_the_runner_reads_the_users_config_and_says_where_its_credential_goes(
    account: pwd.struct_passwd,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a user with ~/.hakuriver/config.toml who runs `sudo hakuriver init service
    # --runner` (HOME is root's under sudo; the unit runs as that user)
    home = Path(account.pw_dir)
    (home / ".hakuriver").mkdir(mode=0o755, exist_ok=True)
    (home / ".hakuriver" / "config.toml").write_text(DEFAULT_CONFIG)
    monkeypatch.setenv("SUDO_USER", account.pw_name)
    monkeypatch.setenv("HOME", "/root")
    words = ["init", "service", "--runner", "--output", str(tmp_path)]
    assert run(words) == 0
    out, err = capsys.readouterr()
    text = (tmp_path / "hakuriver-runner.service").read_text()
    # Then the unit runs as the user with the user's config, from the user's home
    assert f"User={account.pw_name}" in text
    assert f"--config {home}/.hakuriver/config.toml" in text
    assert f"WorkingDirectory=-{home}" in text
    # And the lines say exactly where the credential must be, and how to put it there
    token = home / ".hakuriver" / f"runner-{node_name('')}" / "agent.token"
    assert f"its credential must be in {token}" in out
    assert f"sudo -u {account.pw_name} -H " in out and " --join TOKEN" in out
    assert f"warning: no credential in {token} yet" in err
    assert f"warning: {account.pw_name} is not in the docker group" in err
    # Once joined, no warning about it
    token.parent.mkdir(parents=True)
    token.write_text("secret")
    assert run([*words, "--force"]) == 0
    assert "no credential" not in capsys.readouterr().err


def test_under_sudo_the_host_reads_the_users_config(
    account: pwd.struct_passwd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # config_path() would give /root/.hakuriver/config.toml (HOME under sudo), which the
    # host's user cannot read; the unit must name the user's own, by either default rule
    home = Path(account.pw_dir)
    (home / ".hakuriver").mkdir(mode=0o755, exist_ok=True)
    (home / ".hakuriver" / "config.toml").write_text(DEFAULT_CONFIG)
    (home / "other.toml").write_text(DEFAULT_CONFIG)
    monkeypatch.setenv("SUDO_USER", account.pw_name)
    monkeypatch.setenv("HOME", "/root")
    words = ["init", "service", "--host", "--output", str(tmp_path), "--force"]
    assert run(words) == 0
    text = (tmp_path / "hakuriver-host.service").read_text()
    assert f"User={account.pw_name}" in text
    assert f"--config {home}/.hakuriver/config.toml" in text
    monkeypatch.setenv("HAKURIVER_CONFIG", "~/other.toml")
    assert run(words) == 0
    assert f"--config {home}/other.toml" in (tmp_path / "hakuriver-host.service").read_text()


def test_a_config_the_service_user_cannot_read_is_refused(
    public: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("files of root's that nobody may not read")
    config = config_at(public / "conf")
    words = ["init", "service", "--host", "--user", "nobody", "--output", str(tmp_path)]
    # A directory on the way nobody may not enter
    config.parent.chmod(0o700)
    assert run([*words, "--config", str(config)]) == 2
    assert f"nobody cannot enter {config.parent} (mode 40700)" in capsys.readouterr().err
    # The file itself not readable
    config.parent.chmod(0o755)
    config.chmod(0o600)
    assert run([*words, "--config", str(config)]) == 2
    assert f"nobody cannot read {config} (mode 100600)" in capsys.readouterr().err
    assert not (tmp_path / "hakuriver-host.service").exists()
    # Readable: written, with the relative --config made absolute
    config.chmod(0o644)
    os.chdir(config.parent)
    try:
        assert run([*words, "--config", config.name]) == 0
    finally:
        os.chdir(REPO)
    assert f"--config {exec_word(str(config))}" in (tmp_path / "hakuriver-host.service").read_text()


def test_the_host_warns_when_its_user_cannot_reach_docker(
    public: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = config_at(public / "conf")
    words = ["init", "service", "--host", "--config", str(config), "--output", str(tmp_path)]
    assert run([*words, "--user", "nobody"]) == 0
    assert "warning: nobody is not in the docker group: the host cannot reach Docker" in (
        capsys.readouterr().err
    )
    assert run([*words, "--user", "root", "--force"]) == 0
    assert "docker group" not in capsys.readouterr().err
    # Rootless Docker: the user's own socket, carried into the unit
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/65534/docker.sock")
    assert run([*words, "--user", "nobody", "--force"]) == 0
    assert "docker group" not in capsys.readouterr().err
    text = (tmp_path / "hakuriver-host.service").read_text()
    assert 'Environment="DOCKER_HOST=unix:///run/user/65534/docker.sock"' in text
