"""The README's set-up: `make up` and `make test` started together share one install."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)

# A stand-in for python3 and for the venv's python: `-m venv DIR` makes DIR/bin/python (a copy
# of itself); `-m pip install ...` is an install that refuses to run beside another one (what
# pip does to a venv another pip is writing: "Cannot uninstall pip None"). The first install
# holds on until another make's python shows up beside it (or 1.5 s when none can).
FAKE_PYTHON = """#!{python}
import os, pathlib, shutil, sys, time
here = pathlib.Path(os.environ["FAKE_ROOT"])
args = sys.argv[1:]
if (here / "installing").exists():  # another install is running right now
    (here / "rival").touch()
if args[:2] == ["-m", "venv"]:
    bin_dir = pathlib.Path(args[2]) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(__file__, bin_dir / "python")
    sys.exit(0)
assert args[:3] == ["-m", "pip", "install"], args
try:
    os.close(os.open(here / "installing", os.O_CREAT | os.O_EXCL))
except FileExistsError:
    with open(here / "calls.log", "a") as log:
        log.write("overlap\\n")
    sys.exit("error: uninstall-no-record-file: Cannot uninstall pip None")
# The first step holds on until a rival shows up, or for 1.5 s (with the lock none can).
deadline = time.monotonic() + 1.5
while "--upgrade" in args and time.monotonic() < deadline and not (here / "rival").exists():
    time.sleep(0.01)
os.unlink(here / "installing")
with open(here / "calls.log", "a") as log:
    log.write("install " + " ".join(args[3:]) + "\\n")
"""


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock (util-linux)")
def test_two_makes_started_together_install_once_and_both_succeed(tmp_path: Path) -> None:
    # Given a fresh checkout's Makefile, lock and project file, and no venv
    for name in ("Makefile", "requirements.lock", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "FAKE_ROOT": str(tmp_path)}

    # When two makes need the venv at the same moment
    def make() -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["make", "--no-print-directory", f"PYTHON={fake}", ".venv/.installed"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    first = make()
    second = make()
    outputs = [p.communicate(timeout=40)[0] for p in (first, second)]

    # Then both succeed, one installed and the other reused its venv
    assert [first.returncode, second.returncode] == [0, 0], outputs
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert "overlap" not in calls
    assert len(calls) == 3, calls  # pip upgrade, the lock file, the project: once each
    assert any("installed meanwhile by another make" in out for out in outputs), outputs
    assert (tmp_path / ".venv" / ".installed").exists()
