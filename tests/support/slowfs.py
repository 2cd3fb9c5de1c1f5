"""A slow disk: a FUSE passthrough of BACKING at MOUNTPOINT that sleeps DELAY_MS first in
each read, write, fsync and flush. Run by the system Python: ``python3 slowfs.py BACKING
MOUNTPOINT DELAY_MS`` (foreground; unmount the mount point to stop it).

Why FUSE: the device-mapper ``delay`` target needs the kernel's device mapper, which this
project's machines lack (no ``device-mapper`` in /proc/misc, no /dev/mapper/control, no
``modprobe``); NFS needs the kernel's nfs and nfsd, which they lack too; FUSE is built in
(/dev/fuse). Debian's python3-fusepy (libfuse 2 through ctypes) is the binding: nothing
to compile, nothing added to the project's lock file. docs/chaos.md says how to install it.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time

import fusepy  # Debian's python3-fusepy


class SlowPassthrough(fusepy.Operations):  # type: ignore[misc]
    """Every call goes to the same path under ``root``; data calls wait ``delay_s`` first."""

    use_ns = True

    def __init__(self, root: str, delay_s: float) -> None:
        self.root = os.path.realpath(root)
        self.delay_s = delay_s
        self._rename = threading.Lock()

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _slow(self) -> None:
        time.sleep(self.delay_s)

    # -- metadata --------------------------------------------------------------------------

    def access(self, path: str, amode: int) -> None:
        if not os.access(self._full(path), amode):
            raise fusepy.FuseOSError(errno.EACCES)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._full(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._full(path), uid, gid)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
        keys = ("st_atime_ns", "st_ctime_ns", "st_mtime_ns", "st_gid", "st_mode")
        keys += ("st_nlink", "st_size", "st_uid", "st_blocks")
        attrs = {k: getattr(st, k) for k in keys}
        for name in ("atime", "ctime", "mtime"):
            attrs[f"st_{name}"] = attrs.pop(f"st_{name}_ns")
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._full(path))

    def mknod(self, path: str, mode: int, dev: int) -> None:
        os.mknod(self._full(path), mode, dev)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._full(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._full(path))

    def unlink(self, path: str) -> None:
        os.unlink(self._full(path))

    def symlink(self, target: str, source: str) -> None:
        os.symlink(source, self._full(target))

    def link(self, target: str, source: str) -> None:
        os.link(self._full(source), self._full(target))

    def rename(self, old: str, new: str) -> None:
        with self._rename:
            os.rename(self._full(old), self._full(new))

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        os.utime(self._full(path), ns=times)

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._full(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree")
        keys += ("f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    # -- data ------------------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        return os.open(self._full(path), flags)

    def create(self, path: str, mode: int, fi: object = None) -> int:
        # Read-write whatever the caller asked: the kernel reads through this handle too
        # (a shared mmap's page faults), and a write-only one makes them SIGBUS.
        return os.open(self._full(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._slow()
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._slow()
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._full(path), length)

    def flush(self, path: str, fh: int) -> None:
        self._slow()

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        self._slow()
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)


def main() -> None:
    backing, mountpoint, delay_ms = sys.argv[1], sys.argv[2], float(sys.argv[3])
    fusepy.FUSE(
        SlowPassthrough(backing, delay_ms / 1000),
        mountpoint,
        foreground=True,
        nothreads=False,
        allow_other=True,
        fsname="hakuriver-slowfs",
        attr_timeout=0,
        entry_timeout=0,
    )


if __name__ == "__main__":
    main()
