"""The shells an agent serves, written down so that the next agent can end them.

The engine has no call to end an exec, and a shell's stream closing does not end the
shell: an agent SIGKILLed with ``vps shell`` sessions open leaves their shells running
inside the VPS, as root, attached to nothing (node_agent/shells.py). So each shell is
written down while it runs: one small file under the runner's private state directory
(``shells/``) with its task, its container, its exec id and its process id inside the
container (the first line the shell script prints). The file goes when the shell ends.

The next agent reads them once it has adopted its tasks (``ShellRelay.reap_orphans``):
for each, the engine says whether that exec still runs and whether its command is the
shell script (the marker: no other exec runs exactly that command). If so, its process
id is still the shell's (a running exec keeps its process), and it is hung up as a
``ShellClose`` would (HUP, then KILL). Records of tasks no longer running are dropped;
those of a paused VPS wait for its resume (nothing can be run in a paused container).

What this cannot end: a shell whose agent died in the instant between the exec's start
and its first line (its process id not known yet, so nothing written down).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import msgspec

from events.file_modes import private_dir

log = logging.getLogger("hakuriver.agent")


class ShellRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One running shell, as the next agent needs it."""

    session: str
    task_id: str
    container_id: str
    exec_id: str
    pid: int  # inside the container


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ShellRecord).decode


class ShellRecords:
    """The records of the shells running now, one file each (blocking: call from a thread)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, session: str) -> Path:
        # Session ids are the host's: only a digest of one names a file.
        return self.folder / (hashlib.sha256(session.encode()).hexdigest()[:32] + ".json")

    def remember(self, record: ShellRecord) -> None:
        """Write ``record`` down (a temporary file renamed: never half written)."""
        if not self.folder.exists():
            private_dir(self.folder)
        path = self._path(record.session)
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb", opener=_private) as f:
            f.write(_encode(record))
        os.replace(temporary, path)

    def forget(self, session: str) -> None:
        """The shell ended: drop its record."""
        with contextlib.suppress(FileNotFoundError):
            self._path(session).unlink()

    def all(self) -> list[ShellRecord]:
        """Every record left (a record that cannot be read is dropped, and logged)."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                found.append(_decode(path.read_bytes()))
            except (OSError, msgspec.DecodeError) as exc:
                log.warning("dropping unreadable shell record %s: %s", path.name, exc)
                with contextlib.suppress(OSError):
                    path.unlink()
        return found


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW, 0o600)
