"""The environment keep-alive program: it blocks until a signal, and is written once."""

from __future__ import annotations

import platform
import signal
import stat
import subprocess
from pathlib import Path

import psutil
import pytest
from support.waiting import wait_until

from control_plane.env_keepalive import FALLBACK, MOUNT_POINT, keepalive_program, prepare

pytestmark = pytest.mark.timeout(30)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="runs the x86-64 program")
def test_the_program_waits_until_a_signal_ends_it(tmp_path: Path) -> None:
    keep = prepare(tmp_path)
    assert keep.argv == (MOUNT_POINT,) and keep.source is not None
    proc = subprocess.Popen([keep.source])
    try:
        waiting = psutil.Process(proc.pid)
        # Asleep in the kernel, using no CPU: not spinning, not exited.
        wait_until(lambda: waiting.status() == psutil.STATUS_SLEEPING)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM


def test_it_is_written_once_executable_by_anyone_and_rewritten_when_damaged(
    tmp_path: Path,
) -> None:
    keep = prepare(tmp_path, "x86_64")
    assert keep.source is not None
    path = Path(keep.source)
    assert path.read_bytes() == keepalive_program("x86_64")
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    inode = path.stat().st_ino
    assert prepare(tmp_path, "amd64") == keep and path.stat().st_ino == inode  # untouched
    path.write_bytes(b"garbage")
    prepare(tmp_path, "x86_64")
    assert path.read_bytes() == keepalive_program("x86_64")
    # Right bytes but writable by others (then anyone could swap what every container
    # runs): written again, 0755.
    path.chmod(0o777)
    prepare(tmp_path, "x86_64")
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


def test_aarch64_has_a_program_and_other_machines_use_the_images_tail(tmp_path: Path) -> None:
    program = keepalive_program("arm64")
    assert program is not None and program[:4] == b"\x7fELF" and program[18] == 0xB7
    other = prepare(tmp_path, "riscv64")
    assert other.argv == FALLBACK and other.source is None
    assert other.container_options(image_entrypoint=False) == {"command": list(FALLBACK)}
    assert not list(tmp_path.iterdir())
