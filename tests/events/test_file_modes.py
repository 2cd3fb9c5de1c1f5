"""The log's folder is narrowed only when it is this user's own (issue 14, finding 12).

A log whose file sits in a shared folder (``db_file = "/tmp/hk.duckdb"``, a group's
directory) must not make the host chmod that folder: as root it would have turned /tmp
into 1700 for everyone; as another user it failed the start with a traceback.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from events.file_modes import private_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("before", "traverse", "after"),
    [(0o755, False, 0o700), (0o755, True, 0o711), (0o755, None, 0o700), (0o711, None, 0o711)],
)
def test_an_own_folder_is_narrowed(tmp_path: Path, before: int, traverse: bool, after: int) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(before)
    private_dir(folder, traverse=traverse)
    assert mode(folder) == after


def test_a_sticky_shared_folder_is_left_as_it_is(tmp_path: Path) -> None:
    shared = tmp_path / "tmp-like"
    shared.mkdir()
    shared.chmod(0o1777)
    private_dir(shared)
    assert mode(shared) == 0o1777


@pytest.mark.skipif(os.geteuid() != 0, reason="a folder of another user needs root to make")
def test_another_users_folder_is_left_as_it_is(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    theirs.chmod(0o775)
    os.chown(theirs, 65534, 65534)
    private_dir(theirs)
    assert mode(theirs) == 0o775
