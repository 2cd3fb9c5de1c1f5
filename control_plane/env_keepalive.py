"""Keeping an environment container alive with nothing from its image, and checking it is.

An environment container must run until it is stopped, whatever its image holds: a
distroless image or ``scratch`` plus one binary has no ``tail`` or ``sleep``. So the
host writes a tiny static executable of its own (below: an ELF header and a loop around
one blocking system call, 129 or 148 bytes) into its data directory, and bind-mounts it
read-only at ``/dev/hakuriver-keepalive`` as the container's entrypoint, under the
engine's ``--init``, which forwards ``docker stop``'s SIGTERM (the default action then
ends it). ``/dev`` is a tmpfs in every container, so the mount point leaves nothing in
the container's layer and nothing in the environment's image when it is committed.

Only x86-64 and AArch64 have one; elsewhere the image's own ``tail -f /dev/null`` is
used. Either way ``wait_running`` checks that the keep-alive really runs, and when the
container exits instead it returns the reason with the container's last log lines.
"""

from __future__ import annotations

import os
import platform
import struct
import time
from pathlib import Path
from typing import Any

from msgspec import Struct

MOUNT_POINT = "/dev/hakuriver-keepalive"
FALLBACK = ("tail", "-f", "/dev/null")
START_DEADLINE_S = 30.0
LOG_LINES = 10

_BASE = 0x400000
# The whole program, per architecture: (ELF e_machine, segment alignment, machine code).
# Checked against llvm-mc's encodings; the x86-64 one runs in the tests.
_X86_64 = (
    "b822000000",  # loop: mov eax, 34  (pause: sleep until a signal; none is caught,
    "0f05",  # syscall                     so SIGTERM's default action ends it)
    "ebf7",  # jmp loop
)
_AARCH64 = (
    0xD2800000,  # loop: mov x0, #0   (ppoll with no fds and no timeout: forever)
    0xD2800001,  # mov x1, #0
    0xD2800002,  # mov x2, #0
    0xD2800003,  # mov x3, #0
    0xD2800928,  # mov x8, #73        (__NR_ppoll)
    0xD4000001,  # svc #0
    0x17FFFFFA,  # b loop
)
_PROGRAMS: dict[str, tuple[int, int, bytes]] = {
    "x86_64": (0x3E, 0x1000, bytes.fromhex("".join(_X86_64))),
    "aarch64": (0xB7, 0x10000, struct.pack(f"<{len(_AARCH64)}I", *_AARCH64)),
}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def keepalive_program(machine: str) -> bytes | None:
    """A static ELF executable that blocks until a signal ends it; None if unsupported."""
    found = _PROGRAMS.get(_ALIASES.get(machine, machine))
    if found is None:
        return None
    e_machine, align, code = found
    header, program_header = 64, 56
    size = header + program_header + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, SysV
    elf = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        e_machine,
        1,
        _BASE + header + program_header,  # entry: the code right after the headers
        header,  # program headers follow the ELF header
        0,  # no section headers
        0,
        header,
        program_header,
        1,
        0,
        0,
        0,
    )
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, align)  # PT_LOAD, R+X
    return elf + load + code


class KeepAlive(Struct, frozen=True, kw_only=True):
    """How a new environment container is kept running."""

    argv: tuple[str, ...]
    source: str | None = None  # the host file mounted at MOUNT_POINT; None: the image's own

    def container_options(self, image_entrypoint: bool) -> dict[str, Any]:
        """Options for ``containers.create``: the keep-alive, and its mount.

        It replaces the image's entrypoint only when there is one, else its command:
        a commit cannot clear an entrypoint (``ENTRYPOINT []`` leaves it), and packaging
        restores the image's own from labels.
        """
        options: dict[str, Any] = (
            {"entrypoint": list(self.argv), "command": []}
            if image_entrypoint
            else {"command": list(self.argv)}
        )
        if self.source is not None:
            options["volumes"] = {self.source: {"bind": MOUNT_POINT, "mode": "ro"}}
        return options


def prepare(folder: Path, machine: str | None = None) -> KeepAlive:
    """Write this host's keep-alive into ``folder`` (if needed) and say how to use it."""
    machine = machine or platform.machine()
    program = keepalive_program(machine)
    if program is None:
        return KeepAlive(argv=FALLBACK)
    path = folder / f"hakuriver-keepalive-{_ALIASES.get(machine, machine)}"
    try:
        current = path.read_bytes()
    except OSError:
        current = b""
    if current != program or not _trusted(path):
        folder.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_bytes(program)
        temp.chmod(0o755)  # any user the image names must be able to run it
        os.replace(temp, path)
    return KeepAlive(argv=(MOUNT_POINT,), source=str(path))


def _trusted(path: Path) -> bool:
    """Ours and writable by us alone: it runs inside every environment container."""
    st = path.stat()
    return st.st_uid == os.getuid() and (st.st_mode & 0o777) == 0o755


def wait_running(container: Any, deadline_s: float = START_DEADLINE_S) -> str | None:
    """Wait until the container's keep-alive runs; None then, else why it is not running.

    Blocking (Docker SDK). "Runs" means the engine lists a process whose command is the
    container's entrypoint (so it was executed, not merely forked by the init), checked
    with ``docker top``; where ``top`` is refused, the container must stay up a second.
    """
    container.reload()
    wanted = container.attrs.get("Path") or ""
    until = time.monotonic() + deadline_s
    settle_until: float | None = None
    while True:
        if container.status not in ("created", "running", "restarting"):
            return exit_reason(container)
        if container.status == "running":
            try:
                listed = container.top()
            except Exception:  # no ps on the engine's machine: fall back to staying up
                settle_until = settle_until or time.monotonic() + 1.0
                if time.monotonic() >= settle_until:
                    return None
            else:
                if _runs(listed, wanted):
                    return None
        if time.monotonic() >= until:
            return f"its keep-alive {wanted!r} was not running {deadline_s:.0f}s after the start"
        time.sleep(0.05)
        container.reload()


def _runs(listed: dict[str, Any], program: str) -> bool:
    titles = listed.get("Titles") or []
    column = titles.index("CMD") if "CMD" in titles else len(titles) - 1
    for process in listed.get("Processes") or []:
        words = str(process[column]).split()
        if words and words[0] == program:
            return True
    return False


def exit_reason(container: Any) -> str:
    """``exited (exit code 127); its last log lines: ...`` for a container that ended."""
    state = container.attrs.get("State") or {}
    reason = f"{container.status} (exit code {state.get('ExitCode')})"
    if state.get("Error"):
        reason += f": {state['Error']}"
    try:
        raw = container.logs(stdout=True, stderr=True, tail=LOG_LINES * 5)
    except Exception:
        raw = b""
    lines = [line for line in raw.decode(errors="replace").splitlines() if line.strip()]
    if lines:
        reason += "; its last log lines:\n" + "\n".join(f"  {x}" for x in lines[-LOG_LINES:])
    else:
        reason += "; it wrote no log"
    return reason
