"""A job's workdir archive unpacked on the shared storage: what is kept, what is refused.

Real archives (``tarfile`` + ``gzip``) into a real folder under ``tmp_path``; every
refusal names ``workdir`` and leaves nothing behind.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from control_plane import job_files
from control_plane.errors import InvalidRequest, TooLarge

Add = Callable[[tarfile.TarFile], None]


def archive(*adds: Add) -> bytes:
    """A gzip'd tar made by the ``adds`` functions, in order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for add in adds:
            add(tar)
    return gzip.compress(raw.getvalue())


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> Add:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))

    return add


def entry(name: str, kind: bytes, **fields: object) -> Add:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        for key, value in fields.items():
            setattr(info, key, value)
        tar.addfile(info)

    return add


def test_files_and_folders_are_unpacked_with_their_exec_bit(tmp_path: Path) -> None:
    dest = tmp_path / "jobs" / "abcd1234" / "workdir"
    data = archive(
        entry("src", tarfile.DIRTYPE, mode=0o700),
        file("src/train.py", b"print('hi')\n"),
        file("run.sh", b"#!/bin/sh\necho hi\n", mode=0o755),
        file("./data/a.txt", b"abc"),
    )
    total = job_files.unpack_workdir(data, dest, max_bytes=1 << 20)
    assert total == len(b"print('hi')\n") + len(b"#!/bin/sh\necho hi\n") + 3
    assert (dest / "src" / "train.py").read_bytes() == b"print('hi')\n"
    assert (dest / "data" / "a.txt").read_bytes() == b"abc"
    assert os.stat(dest / "run.sh").st_mode & 0o111
    assert not os.stat(dest / "src" / "train.py").st_mode & 0o111
    # Folders are readable by every rank, whatever their archive said.
    assert stat.S_IMODE(os.stat(dest / "src").st_mode) == 0o755


@pytest.mark.parametrize(
    ("adds", "says"),
    [
        ((file("/etc/evil"),), "not a relative path"),
        ((file("../evil"),), "outside the workdir"),
        ((file("a/../../evil"),), "outside the workdir"),
        ((entry("link", tarfile.SYMTYPE, linkname="/etc"),), "symbolic link"),
        ((file("a"), entry("b", tarfile.LNKTYPE, linkname="a")), "hard link"),
        ((entry("dev", tarfile.CHRTYPE, devmajor=1, devminor=3),), "device"),
        ((entry("fifo", tarfile.FIFOTYPE),), "special file"),
        ((file("a"), file("a")), "twice"),
        ((file("a"), file("a/b")), "twice"),
    ],
)
def test_hostile_entries_are_refused_and_nothing_is_left(
    tmp_path: Path, adds: tuple[Add, ...], says: str
) -> None:
    dest = tmp_path / "workdir"
    with pytest.raises(InvalidRequest) as refused:
        job_files.unpack_workdir(archive(*adds), dest, max_bytes=1 << 20)
    assert refused.value.field == "workdir"
    assert says in refused.value.message
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert not Path("/etc/evil").exists()


def test_a_symlink_then_a_file_through_it_never_writes_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    data = archive(entry("d", tarfile.SYMTYPE, linkname=str(outside)), file("d/x"))
    with pytest.raises(InvalidRequest):
        job_files.unpack_workdir(data, tmp_path / "workdir", max_bytes=1 << 20)
    assert list(outside.iterdir()) == []


def test_too_big_after_unpacking_is_413_and_nothing_is_left(tmp_path: Path) -> None:
    # Given 2 MiB of zeros: a few KiB once compressed, over a 1 MiB limit unpacked.
    data = archive(file("zeros", bytes(2 << 20)))
    assert len(data) < 10_000
    dest = tmp_path / "workdir"
    with pytest.raises(TooLarge) as refused:
        job_files.unpack_workdir(data, dest, max_bytes=1 << 20)
    assert refused.value.field == "workdir" and str(1 << 20) in refused.value.message
    assert refused.value.status == 413
    assert not dest.exists()


def test_too_many_entries_count_against_the_limit(tmp_path: Path) -> None:
    # 300 empty files count 300 tar headers (150 KiB): over a 100 KiB limit.
    data = archive(*(file(f"f{i}", b"") for i in range(300)))
    with pytest.raises(TooLarge):
        job_files.unpack_workdir(data, tmp_path / "workdir", max_bytes=100 << 10)
    assert not (tmp_path / "workdir").exists()
    # The same under a limit that holds them is fine.
    assert job_files.unpack_workdir(data, tmp_path / "ok", max_bytes=1 << 20) == 0
    assert len(list((tmp_path / "ok").iterdir())) == 300


@pytest.mark.parametrize(
    "data",
    [b"", b"not gzip at all", gzip.compress(b"not a tar" * 100, mtime=0)],
    ids=["empty", "not gzip", "gzip of no tar"],  # stable: xdist workers must agree
)
def test_what_is_not_a_gzipped_tar_is_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(InvalidRequest) as refused:
        job_files.unpack_workdir(data, tmp_path / "workdir", max_bytes=1 << 20)
    assert refused.value.field == "workdir"
    assert not (tmp_path / "workdir").exists()


def test_volumes_are_folders_everyone_may_write(tmp_path: Path) -> None:
    path = job_files.create_volume(tmp_path, "training-data")
    assert path == tmp_path / "volumes" / "training-data"
    assert stat.S_IMODE(os.stat(path).st_mode) == job_files.VOLUME_MODE
    assert job_files.volume_exists(tmp_path, "training-data")
    assert not job_files.volume_exists(tmp_path, "other")
    assert not job_files.volume_exists(tmp_path, "../volumes/training-data")
    with pytest.raises(FileExistsError):
        job_files.create_volume(tmp_path, "training-data")


@pytest.mark.parametrize("name", ["", "UPPER", "-dash", "a/b", "..", "x" * 64, 3])
def test_bad_volume_names_are_refused_naming_the_field(name: object) -> None:
    with pytest.raises(InvalidRequest) as refused:
        job_files.check_volume_name(name)
    assert refused.value.field == "name"


def test_a_workdir_copy_is_given_to_its_owner_when_the_host_can(tmp_path: Path) -> None:
    # Ranks that run as their owner must be able to write in their workdir.
    import os
    import pwd

    if os.geteuid() != 0:
        assert not job_files.give_to_owner(tmp_path, "nobody")
        return
    nobody = pwd.getpwnam("nobody")
    data = archive(file("a/b.txt", b"x"), file("c.txt", b"y"))
    dest = tmp_path / "workdir"
    job_files.unpack_workdir(data, dest, max_bytes=1 << 20)
    assert job_files.give_to_owner(dest, "nobody")
    owners = {p.stat().st_uid for p in [dest, *dest.rglob("*")]}
    assert owners == {nobody.pw_uid}
    # A name with no account here: left as it is.
    assert not job_files.give_to_owner(dest, "no-such-account-here")
