"""Fixtures for running hakurun as a real subprocess in a scratch directory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"

Run = Callable[..., subprocess.CompletedProcess[str]]
Install = Callable[..., Path]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The directory hakurun runs in."""
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A directory first on PATH, holding a ``hakurun`` command for shell pipelines."""
    directory = tmp_path / "bin"
    directory.mkdir()
    wrapper = directory / "hakurun"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.hakurun "$@"\n')
    wrapper.chmod(0o755)
    return directory


@pytest.fixture
def env(bin_dir: Path) -> dict[str, str]:
    """The environment: this interpreter is ``python`` and the repository is importable."""
    environment = dict(os.environ)
    environment["PATH"] = os.pathsep.join(
        [str(bin_dir), str(Path(sys.executable).parent), environment.get("PATH", "")]
    )
    environment["PYTHONPATH"] = str(REPO)
    return environment


@pytest.fixture
def hakurun(work: Path, env: dict[str, str]) -> Run:
    """Run hakurun with these arguments in the scratch directory and wait for it."""

    def run(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.hakurun", *arguments],
            cwd=work,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@pytest.fixture
def install(work: Path) -> Install:
    """Copy a fixture script (into the scratch directory unless told); executable on request."""

    def copy(
        fixture: str, name: str | None = None, *, executable: bool = False, into: Path = work
    ) -> Path:
        target = into / (name or fixture)
        text = (FIXTURES / fixture).read_text()
        if executable and fixture.endswith(".py"):
            text = f"#!{sys.executable}\n{text}"
        target.write_text(text)
        target.chmod(0o755 if executable else 0o644)
        return target

    return copy
