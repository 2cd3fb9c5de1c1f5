"""The agent's side of a job's ranks (events/jobs.py): control folders, setup.done, go.

A rank (a task whose spec has a ``job_id``) runs ``events.jobs.rank_command``: after its
setup it creates ``SETUP_DONE`` in its control folder and waits for ``GO`` there. The
agent gives it that folder before the start, reports ``job.setup_done`` once when the
file appears, creates ``GO`` when the host sends ``link.JobGo``, and removes the folder
once the task's end is reported and forgotten.

Where the folders are: ``<state_dir>/jobs/<task_id>`` when tasks run as the runner's
user (they could reach the state directory anyway). With ``run_tasks_as = "owner"`` the
state directory is private to root, and a process rank run as its owner could not reach
a folder inside it; there they are ``<local_temp_dir>/.hakuriver-jobs/<task_id>``: a root
folder only the runner writes (0711: entered by name, not listed), each rank's folder
0700 and its owner's, so no other account's task can enter it, and no task can replace
or plant one (only the runner writes their parent; a root planted in the local temp
folder before the runner made it is moved aside, ``_ensure_root``).

Both files are only tested for existence (``lstat``), never read or followed: a rank
can only hurt its own job by writing there. What the agent keeps beside each folder
(outside the rank's reach): ``<task_id>.rank`` (the job and rank, for the report after
an agent restart) and ``<task_id>.reported`` (written after ``job.setup_done`` went into
the outbox), so the report is made once per rank, across restarts too.

Watching: one loop polls every waiting rank's folder (``POLL_S``) while any waits, and
ends when none does. Polling rather than inotify: a rank's folder may be on any file
system, the ranks waiting on one node are few, and a ``lstat`` each 50 ms is nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from events import link
from events.jobs import GO, SETUP_DONE
from events.types import JobSetupDone
from node_agent.accounts import resolve_account
from node_agent.executors.base import StartFailed

if TYPE_CHECKING:
    from node_agent.agent import Agent

log = logging.getLogger("hakuriver.agent")

POLL_S = 0.05
RECORD = ".rank"
REPORTED = ".reported"
# The root of the control folders: private in the runner's own mode, entered by name
# (never listed) in owner mode, where ranks run as other accounts.
PRIVATE_ROOT = 0o700
TRAVERSE_ROOT = 0o711
FOLDER_MODE = 0o700
OPEN_TO_CONTAINER = 0o777


class RankRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Which job and rank a task is (kept beside its folder for a restarted agent)."""

    job_id: str
    rank: int


class ControlFolderError(StartFailed):
    """The control folders cannot be made safely; the message says why."""


def control_root(state_dir: Path, local_temp_dir: Path, *, owner_mode: bool) -> Path:
    """Where this node's rank control folders are (see the module docstring)."""
    return local_temp_dir / ".hakuriver-jobs" if owner_mode else state_dir / "jobs"


def _ensure_root(root: Path, mode: int) -> None:
    """Make ``root`` a real folder of the runner's user with ``mode`` (blocking).

    In owner mode it lies in the local temp folder, where users' tasks may write: one
    that planted something there first (a symlink, a folder of its own) would keep every
    rank on the node from starting. What is there and is not the runner's folder is moved
    aside (renamed, never followed) and the folder made again."""
    for _ in range(3):
        with contextlib.suppress(FileExistsError):
            root.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(root, mode)
        found = os.lstat(root)
        if stat.S_ISDIR(found.st_mode) and found.st_uid == os.geteuid():
            if stat.S_IMODE(found.st_mode) != mode:
                os.chmod(root, mode)
            return
        aside = root.with_name(f"{root.name}.planted-{os.getpid()}-{time.monotonic_ns()}")
        log.warning("%s is not the runner's folder (planted?): moved to %s", root, aside)
        try:
            os.rename(root, aside)
        except OSError as exc:
            raise ControlFolderError(
                f"{root} is not a folder of the runner's user (a symlink, or made by someone"
                f" else) and cannot be moved aside ({exc}): remove it, the runner makes it"
                " again for job ranks"
            ) from exc
    raise ControlFolderError(f"{root} keeps being replaced: job ranks cannot start here")


def _safe_name(task_id: str) -> bool:
    return bool(task_id) and "/" not in task_id and "\0" not in task_id and task_id[0] != "."


class Ranks:
    """The job ranks this agent runs: their control folders and the setup watch."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.root = control_root(
            agent.state_dir, agent.settings.local_temp_dir, owner_mode=agent.runs_as_owners
        )
        self.known: dict[str, RankRecord] = {}
        # Ranks whose setup.done is not reported yet.
        self.waiting: set[str] = set()
        # Tasks the host let run (JobGo), also before their folder exists (still starting).
        self._released: set[str] = set()
        self._watcher: asyncio.Task[None] | None = None

    def folder(self, task_id: str) -> Path:
        """A rank's control folder (derived from its id: found again after a restart)."""
        return self.root / task_id

    # -- the agent's hooks -----------------------------------------------------------------

    async def prepare(self, command: link.Run) -> str | None:
        """Make a rank's control folder before its start: its path, or None for a task
        that is not a rank. ``StartFailed`` when it cannot be made."""
        spec = command.spec
        if spec.job_id is None:
            return None
        record = RankRecord(job_id=spec.job_id, rank=spec.rank or 0)
        owner = spec.owner if self.agent.runs_as_owners else None
        # A container's user is the image's (USER 65532 in a distroless image), not the
        # runner's: the folder is open to whoever the container runs as. Nobody else
        # reaches it: its root is the runner's alone (0700), and the container sees only
        # this folder.
        mode = OPEN_TO_CONTAINER if spec.container is not None and owner is None else FOLDER_MODE
        path = await asyncio.to_thread(self._make, command.task_id, record, owner, mode)
        self.known[command.task_id] = record
        return str(path)

    def watch(self, task_id: str) -> None:
        """Watch a started (or adopted) rank for its setup's end; others are ignored."""
        if task_id not in self.known:
            return
        self.waiting.add(task_id)
        if self._watcher is None or self._watcher.done():
            self._watcher = self.agent.spawn(self._report_setups(), "rank-setups")

    async def go(self, task_id: str) -> None:
        """``link.JobGo``: let the rank run (idempotent; a task not run here is ignored)."""
        if task_id not in self.agent.running:
            return
        # Recorded first: a rank still being prepared creates GO itself once its folder
        # exists (``_make`` reads this after its mkdir), so the release is never lost.
        self._released.add(task_id)
        await asyncio.to_thread(_create_go, self.folder(task_id))

    async def forget(self, task_id: str, *, keep_files: bool = False) -> None:
        """The task ended and its end is reported: drop its folder (kept with
        ``keep_files``, when the executor kept its records for the next adoption)."""
        self.waiting.discard(task_id)
        self._released.discard(task_id)
        if self.known.pop(task_id, None) is not None and not keep_files:
            await asyncio.to_thread(self._remove, task_id)

    async def restore(self) -> None:
        """After adoption: watch the adopted ranks again (a setup that ended while no agent
        watched is reported now), and remove folders no running task owns any more."""
        running = set(self.agent.running)
        mode = TRAVERSE_ROOT if self.agent.runs_as_owners else PRIVATE_ROOT
        try:
            found = await asyncio.to_thread(self._scan, running, mode)
        except ControlFolderError as exc:  # ranks will fail to start saying so; tasks go on
            log.error("job ranks cannot be watched: %s", exc)
            return
        self.known.update(found)
        for task_id in found:
            self.watch(task_id)

    # -- the watch ---------------------------------------------------------------------------

    async def ended(self, task_id: str) -> None:
        """A rank ended (its end not reported yet): a setup that ended since the last look
        is reported now, so the log has it before the rank's ``task.finished``."""
        if task_id in self.waiting:
            done, _ = await asyncio.to_thread(self._look, [task_id])
            if done:
                await self._report(task_id)
            self.waiting.discard(task_id)

    async def _report_setups(self) -> None:
        while self.waiting:
            done, reported = await asyncio.to_thread(self._look, sorted(self.waiting))
            self.waiting.difference_update(reported)
            for task_id in done:
                await self._report(task_id)
            if self.waiting:
                await self.agent.activity.outside(asyncio.sleep(POLL_S))

    async def _report(self, task_id: str) -> None:
        """Report a rank's setup, unless that is done or under way (it leaves ``waiting``
        before the first await: the watch loop and ``ended`` never both report it)."""
        record = self.known.get(task_id)
        if task_id not in self.waiting or record is None:
            return  # reported, or ended and forgotten meanwhile
        self.waiting.discard(task_id)
        await self.agent.emit(
            JobSetupDone(
                task_id=task_id, job_id=record.job_id, rank=record.rank, node=self.agent.node
            )
        )
        await asyncio.to_thread(self._mark_reported, task_id)

    def _look(self, task_ids: list[str]) -> tuple[list[str], list[str]]:
        """(ranks whose setup ended, not yet reported; ranks already reported)."""
        done: list[str] = []
        reported: list[str] = []
        for task_id in task_ids:
            if os.path.lexists(self._beside(task_id, REPORTED)):
                reported.append(task_id)
            elif os.path.lexists(self.folder(task_id) / SETUP_DONE):
                done.append(task_id)
        return done, reported

    # -- the files (blocking) ------------------------------------------------------------------

    def _beside(self, task_id: str, suffix: str) -> Path:
        return self.root / f"{task_id}{suffix}"

    def _make(
        self, task_id: str, record: RankRecord, owner: str | None, mode: int = FOLDER_MODE
    ) -> Path:
        if not _safe_name(task_id):
            raise StartFailed(f"task id {task_id!r} cannot name a rank's control folder")
        account = resolve_account(owner) if owner is not None else None
        _ensure_root(self.root, TRAVERSE_ROOT if account is not None else PRIVATE_ROOT)
        folder = self.folder(task_id)
        try:
            with contextlib.suppress(FileExistsError):  # a previous agent made it
                os.mkdir(folder, FOLDER_MODE)
            found = os.lstat(folder)
            if not stat.S_ISDIR(found.st_mode):
                raise StartFailed(f"the rank's control folder {folder} is not a folder")
            uid, gid = (account.uid, account.gid) if account else (os.geteuid(), os.getegid())
            if (found.st_uid, found.st_gid) != (uid, gid):
                os.chown(folder, uid, gid, follow_symlinks=False)
            if stat.S_IMODE(found.st_mode) != mode:
                os.chmod(folder, mode)
            _write_private(self._beside(task_id, RECORD), msgspec.json.encode(record))
        except OSError as exc:
            self._remove(task_id)
            raise StartFailed(f"cannot make the rank's control folder {folder}: {exc}") from exc
        if task_id in self._released:  # JobGo came while it was starting
            _create_go(folder)
        return folder

    def _mark_reported(self, task_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # forgotten meanwhile
            _write_private(self._beside(task_id, REPORTED), b"")

    def _remove(self, task_id: str) -> None:
        # rmtree never follows a symlink the rank left in its folder (fd-based on Linux).
        shutil.rmtree(self.folder(task_id), ignore_errors=True)
        for suffix in (RECORD, REPORTED):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._beside(task_id, suffix))

    def _scan(self, running: set[str], mode: int) -> dict[str, RankRecord]:
        """The records of the running ranks; the leftovers of others are removed."""
        if not self.root.exists():
            return {}
        _ensure_root(self.root, mode)
        found: dict[str, RankRecord] = {}
        names = set()
        for entry in os.scandir(self.root):
            name = entry.name.removesuffix(".tmp")
            for suffix in (RECORD, REPORTED):
                name = name.removesuffix(suffix)
            names.add(name)
        for task_id in sorted(names):
            if task_id not in running:
                self._remove(task_id)
                continue
            try:
                raw = self._beside(task_id, RECORD).read_bytes()
                found[task_id] = msgspec.json.decode(raw, type=RankRecord)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue  # not a rank of ours (or its record is gone): nothing to watch
        return found


def _create_go(folder: Path) -> None:
    """Create ``GO`` in a rank's folder, never following a link: an existing file (or
    anything the rank planted under that name) counts as done; no folder, nothing to do."""
    flags = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY | os.O_CLOEXEC
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(folder / GO, flags, 0o644))


def _write_private(path: Path, data: bytes) -> None:
    """Write a small file of the runner's (0600), replacing it whole."""
    temp = path.with_name(f"{path.name}.tmp")
    flags = os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(temp, path)
