"""Environment images on this node: the newest packaged tarball, loaded when needed.

The host packages an environment as ``<shared>/<container_dir>/<name>-<ts>.tar``
(``docker save`` of ``hakuriver/<name>:base``, labelled ``hakuriver.env=<name>`` and
``hakuriver.env_timestamp=<ts>``) with ``<name>-<ts>.tar.sha256`` beside it. Both are
written under dot-names ending ``.tmp`` and renamed into place, the digest first, so a
``.tar`` without its digest, or whose bytes do not match it, is half-written or
corrupt and is refused. Dot-files and ``*.tmp`` are never looked at.

``ImageSync.ensure(env)`` runs before every container task: it compares the local
image's ``hakuriver.env_timestamp`` label (no image, or no label: older than any
tarball) with the newest tarball of the environment, and loads the tarball when it is
newer: hash the file (refused on mismatch), ``docker load``, check the loaded image
carries the expected labels, tag it ``hakuriver/<name>:base``. One load at a time per
environment: concurrent tasks of one environment wait for the same load; different
environments load independently.

Decisions:

- A refused tarball does not break an environment that already works: when a previous
  image is on this node, ``ensure`` logs the refusal, returns it in ``EnvImage.refused``
  and the task runs on the previous image. Failing every task because a newer tarball
  is corrupt would turn one bad packaging into an outage; the log names the file, and
  re-running ``hakuriver docker create-tar`` fixes it. With no previous image the task
  fails (``EnvSyncFailed``) with the refusal as its message. When the newest tarball
  is refused an older valid one (newer than the local image) is loaded instead.
- A repeated ``ensure`` costs a folder listing and one image inspect (which notices an
  image removed behind the agent's back), never a hash: a current image stops the
  comparison before any file is read, and digests already computed (verified or
  refused) are remembered by the files' identity (inode, size, mtime of the tarball
  and its digest file), so a corrupt tarball is hashed once, not once per task.
- After a load the replaced image is removed when it is left untagged (best effort,
  never forced: a container still using it keeps it), so updates do not fill the disk.
- ``watch`` pre-loads a tarball as soon as it is renamed into the folder, for any
  environment, even one this node never ran: packaging announces a task soon. At
  startup only environments whose local image is older than a tarball are refreshed,
  not every environment ever packaged: those never used here stay on disk until a task
  asks for them. The watcher re-lists the folder on every change and every
  ``rescan_s`` seconds and pre-loads the environments whose files are new or changed;
  the periodic re-listing covers a shared folder on NFS, whose writes from another
  machine raise no inotify event (``WATCHFILES_FORCE_POLLING=1`` makes watchfiles poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchfiles import Change, awatch

from events.tarballs import (
    DIGEST_SUFFIX,
    ENV_NAME,
    LABEL_ENV,
    LABEL_TIMESTAMP,
    parse_digest,
    parse_tarball_name,
)
from events.types import EnvSynced
from node_agent.executors.base import StartFailed
from node_agent.executors.docker import image_for

log = logging.getLogger("hakuriver.images")


# (device, inode, size, mtime) of the tarball and of its digest file (None: absent).
_Stat = tuple[int, int, int, int]
Fingerprint = tuple[_Stat, _Stat | None]


class EnvSyncFailed(StartFailed):
    """An environment has no usable image on this node; the message says what to do."""


class TarballRefused(Exception):
    """A tarball is half-written, corrupt or not what its name says; it is not loaded."""


@dataclass(frozen=True)
class Tarball:
    """One packaged environment in the shared folder."""

    name: str
    timestamp: int
    path: Path

    @property
    def digest_path(self) -> Path:
        return self.path.with_name(self.path.name + DIGEST_SUFFIX)


@dataclass(frozen=True)
class EnvImage:
    """What ``ensure`` settled on for an environment."""

    name: str
    image: str  # the reference tasks run: hakuriver/<name>:base
    timestamp: int | None  # its hakuriver.env_timestamp label; None when it has none
    loaded: bool = False  # this call loaded a tarball
    refused: tuple[str, ...] = ()  # why newer tarballs were not loaded


def _watched(change: Change, path: str) -> bool:
    """watchfiles filter: final tarball and digest names (never dot-files or *.tmp)."""
    filename = os.path.basename(path)
    filename = filename.removesuffix(DIGEST_SUFFIX)
    return change != Change.deleted and parse_tarball_name(filename) is not None


def _stat(path: Path) -> _Stat | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = folder.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass
class _Digests:
    """Digests computed so far, by file identity: verified ones and refusals."""

    verified: dict[Path, tuple[Fingerprint, str]] = field(default_factory=dict)
    refused: dict[Path, tuple[Fingerprint, str]] = field(default_factory=dict)


class ImageSync:
    """Keeps this node's environment images as new as the tarballs in the shared folder."""

    def __init__(
        self,
        client: Any,
        tar_dir: Path | str,
        *,
        node: str,
        on_synced: Callable[[EnvSynced], Awaitable[None]] | None = None,
        rescan_s: float = 30.0,
    ) -> None:
        self.client = client
        self.tar_dir = Path(tar_dir)
        self.node = node
        self.on_synced = on_synced
        self.rescan_s = rescan_s
        self.watching = asyncio.Event()  # set while the folder is watched
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._digests = _Digests()
        self._reported: dict[str, list[str]] = {}  # env -> refusals last logged
        self._preloads: set[asyncio.Task[None]] = set()

    # -- before a task ---------------------------------------------------------------------

    async def ensure(self, env: str) -> EnvImage | None:
        """Make ``hakuriver/<env>:base`` the newest valid packaging of ``env``.

        Returns None for a full image reference (``repo/x:tag``: not an environment).
        Raises ``EnvSyncFailed`` when no usable image exists on this node.
        """
        if "/" in env or ":" in env:
            return None
        if not ENV_NAME.fullmatch(env):
            raise EnvSyncFailed(
                f"environment {env!r} is not a valid name"
                " (lowercase letters, digits, '_', '.', '-')"
            )
        async with self._locks[env]:
            try:
                return await self._ensure_locked(env)
            except EnvSyncFailed:
                raise
            except Exception as exc:  # whatever went wrong, the task must fail cleanly
                log.exception("syncing environment %s failed", env)
                raise EnvSyncFailed(
                    f"environment {env!r}: sync failed on node {self.node}: {exc}"
                ) from exc

    async def _ensure_locked(self, env: str) -> EnvImage:
        image = image_for(env)
        tarballs = await asyncio.to_thread(self._tarballs, env)
        local_id, local_ts = await asyncio.to_thread(self._local, env)
        refused: list[str] = []
        for tarball in tarballs:  # newest first
            if local_id is not None and local_ts is not None and tarball.timestamp <= local_ts:
                break
            try:
                timestamp = await self._load(tarball, local_id)
            except TarballRefused as exc:
                refused.append(str(exc))
                continue
            return EnvImage(env, image, timestamp, loaded=True, refused=tuple(refused))
        if local_id is not None:
            if refused and self._reported.get(env) != refused:  # once, not once per task
                self._reported[env] = refused
                log.warning(
                    "environment %s: running on the previous image (timestamp %s): %s",
                    env,
                    local_ts,
                    "; ".join(refused),
                )
            return EnvImage(env, image, local_ts, refused=tuple(refused))
        if refused:
            raise EnvSyncFailed(
                f"environment {env!r} has no usable image on node {self.node}: "
                + "; ".join(refused)
                + f" (re-run `hakuriver docker create-tar {env}` on the host)"
            )
        raise EnvSyncFailed(
            f"environment {env!r} has no image on node {self.node} and no tarball in"
            f" {self.tar_dir}; run `hakuriver docker create-tar {env}` on the host"
        )

    async def _load(self, tarball: Tarball, previous_id: str | None) -> int:
        """Verify and load one tarball; its timestamp. Raises ``TarballRefused``."""
        started = time.monotonic()
        fingerprint, sha256 = await self._verified_digest(tarball)
        try:
            loaded = await asyncio.to_thread(self._docker_load, tarball.path)
            await asyncio.to_thread(self._adopt_loaded, tarball, loaded, previous_id)
        except TarballRefused as exc:  # its content is wrong: never load it again
            log.warning("%s", exc)
            self._digests.verified.pop(tarball.path, None)
            self._digests.refused[tarball.path] = (fingerprint, str(exc))
            raise
        except Exception as exc:  # the engine failed; the next task tries again
            message = f"docker could not load {tarball.path}: {exc}"
            log.warning("%s", message)
            raise TarballRefused(message) from exc
        duration = time.monotonic() - started
        log.info("environment %s: loaded %s in %.1fs", tarball.name, tarball.path.name, duration)
        if self.on_synced is not None:
            synced = EnvSynced(
                name=tarball.name,
                node=self.node,
                timestamp=tarball.timestamp,
                sha256=sha256,
                duration_s=round(duration, 3),
            )
            try:
                await self.on_synced(synced)
            except Exception:
                log.exception("reporting env.synced for %s failed", tarball.name)
        return tarball.timestamp

    async def _verified_digest(self, tarball: Tarball) -> tuple[Fingerprint, str]:
        """The tarball's identity and sha256, once it matches its digest file.

        Each file is hashed once: the outcome is remembered by its identity.
        """
        path = tarball.path
        try:
            fingerprint = await asyncio.to_thread(self._fingerprint, tarball)
        except OSError as exc:
            raise TarballRefused(f"cannot read {path}: {exc}") from exc
        for cache, ok in ((self._digests.verified, True), (self._digests.refused, False)):
            known = cache.get(path)
            if known is not None and known[0] == fingerprint:
                if ok:
                    return fingerprint, known[1]
                raise TarballRefused(known[1])
        try:
            sha256 = await asyncio.to_thread(self._check_digest, tarball, fingerprint)
        except TarballRefused as exc:
            log.warning("%s", exc)
            self._digests.refused[path] = (fingerprint, str(exc))
            raise
        except OSError as exc:  # not remembered: permissions or NFS may recover
            raise TarballRefused(f"cannot read {path}: {exc}") from exc
        self._digests.verified[path] = (fingerprint, sha256)
        self._digests.refused.pop(path, None)
        return fingerprint, sha256

    # -- the watcher -----------------------------------------------------------------------

    async def watch(self, stop: asyncio.Event) -> None:
        """Pre-load tarballs as they appear in the folder, until ``stop`` is set."""
        # awatch sets the event it is given when cancelled: keep the caller's untouched.
        halt = asyncio.Event()
        relay = asyncio.create_task(stop.wait())
        relay.add_done_callback(lambda _: halt.set())
        try:
            known: dict[str, _Stat] = {}
            try:
                known = await self._list_files()
                self._preload(await self._stale(known))
            except Exception as exc:  # the watch below re-lists; a task start still syncs
                log.warning("scanning %s at startup failed: %s", self.tar_dir, exc)
            backoff = 0.5
            while not halt.is_set():
                try:
                    known = await self._watch_folder(halt, known)
                    backoff = 0.5
                except Exception as exc:
                    log.warning("watching %s failed (%s); retrying", self.tar_dir, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(halt.wait(), backoff)
                    backoff = min(backoff * 2, self.rescan_s)
        finally:
            self.watching.clear()
            relay.cancel()
            for task in list(self._preloads):
                task.cancel()
            await asyncio.gather(*self._preloads, return_exceptions=True)

    async def _watch_folder(self, halt: asyncio.Event, known: dict[str, _Stat]) -> dict[str, _Stat]:
        """Watch the folder until it disappears or is replaced; the last listing."""
        await asyncio.to_thread(self.tar_dir.mkdir, parents=True, exist_ok=True)
        identity = await asyncio.to_thread(_identity, self.tar_dir)
        folder = str(self.tar_dir)  # its own deletion wakes the watcher too
        # Files that arrived while the folder was not watched.
        known = await self._relist(known)
        self.watching.set()
        # No await between set() and awatch's first step, which starts the inotify
        # watch before it suspends: whoever waits on ``watching`` resumes after that.
        try:
            async for _ in awatch(
                self.tar_dir,
                watch_filter=lambda change, path: path == folder or _watched(change, path),
                stop_event=halt,
                step=50,
                rust_timeout=max(1, int(self.rescan_s * 1000)),
                yield_on_timeout=True,
                recursive=False,
            ):
                if await asyncio.to_thread(_identity, self.tar_dir) != identity:
                    log.info("%s disappeared or was replaced; watching it again", self.tar_dir)
                    break
                known = await self._relist(known)
        finally:
            self.watching.clear()
        return known

    async def _relist(self, known: dict[str, _Stat]) -> dict[str, _Stat]:
        """List the folder and pre-load environments whose files are new or changed."""
        listing = await self._list_files()
        changed = {
            filename.removesuffix(DIGEST_SUFFIX)
            for filename, stat in listing.items()
            if known.get(filename) != stat
        }
        names = {parsed[0] for f in changed if (parsed := parse_tarball_name(f)) is not None}
        self._preload(names)
        return listing

    async def _list_files(self) -> dict[str, _Stat]:
        return await asyncio.to_thread(self._listing)

    async def _stale(self, listing: dict[str, _Stat]) -> set[str]:
        """Environments whose local image exists and is older than a tarball."""
        newest: dict[str, int] = {}
        for filename in listing:
            parsed = parse_tarball_name(filename)
            if parsed is not None:
                newest[parsed[0]] = max(parsed[1], newest.get(parsed[0], -1))
        stale = set()
        for name, timestamp in newest.items():
            try:
                local_id, local_ts = await asyncio.to_thread(self._local, name)
            except Exception as exc:
                log.warning("cannot inspect the image of %s: %s", name, exc)
                continue
            if local_id is not None and (local_ts is None or local_ts < timestamp):
                stale.add(name)
        return stale

    def _preload(self, names: Iterable[str]) -> None:
        for name in sorted(names):
            task = asyncio.create_task(self._preload_one(name), name=f"preload-{name}")
            self._preloads.add(task)
            task.add_done_callback(self._preloads.discard)

    async def _preload_one(self, name: str) -> None:
        try:
            await self.ensure(name)
        except EnvSyncFailed as exc:
            log.warning("pre-loading environment %s: %s", name, exc)
        except Exception:
            log.exception("pre-loading environment %s failed", name)

    # -- blocking helpers (worker threads) -------------------------------------------------

    def _listing(self) -> dict[str, _Stat]:
        """Every final tarball and digest file in the folder, with its identity."""
        found: dict[str, _Stat] = {}
        try:
            entries = list(os.scandir(self.tar_dir))
        except FileNotFoundError:
            return found
        for entry in entries:
            if parse_tarball_name(entry.name.removesuffix(DIGEST_SUFFIX)) is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat()
                found[entry.name] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return found

    def _tarballs(self, env: str) -> list[Tarball]:
        """The environment's tarballs, newest first."""
        found = []
        try:
            entries = list(os.scandir(self.tar_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            parsed = parse_tarball_name(entry.name)
            if parsed is not None and parsed[0] == env:
                found.append(Tarball(env, parsed[1], Path(entry.path)))
        return sorted(found, key=lambda t: t.timestamp, reverse=True)

    def _local(self, env: str) -> tuple[str | None, int | None]:
        """The local image's id and environment timestamp (None, None: no image)."""
        import docker.errors

        try:
            image = self.client.images.get(image_for(env))
        except docker.errors.ImageNotFound:
            return None, None
        label = (image.labels or {}).get(LABEL_TIMESTAMP, "")
        return image.id, int(label) if label.isascii() and label.isdigit() else None

    @staticmethod
    def _fingerprint(tarball: Tarball) -> Fingerprint:
        tar = _stat(tarball.path)
        if tar is None:
            raise TarballRefused(f"tarball {tarball.path} disappeared (pruned by the host?)")
        return tar, _stat(tarball.digest_path)

    def _check_digest(self, tarball: Tarball, fingerprint: Fingerprint) -> str:
        """Hash the tarball and compare it with its digest file; the digest."""
        if fingerprint[1] is None:
            raise TarballRefused(
                f"tarball {tarball.path} has no {tarball.digest_path.name} beside it"
                " (half-written, or copied by hand without its digest): refused"
            )
        try:
            text = tarball.digest_path.read_text(encoding="ascii")
        except UnicodeDecodeError as exc:
            raise TarballRefused(f"{tarball.digest_path} is not a sha256sum line: refused") from exc
        expected = parse_digest(text, tarball.path.name)
        if expected is None:
            raise TarballRefused(
                f"{tarball.digest_path} is not `<sha256>  {tarball.path.name}`: refused"
            )
        with tarball.path.open("rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
        if actual != expected:
            raise TarballRefused(
                f"tarball {tarball.path} does not match its digest (sha256 {actual},"
                f" expected {expected}): truncated or corrupt, refused"
            )
        return expected

    def _docker_load(self, path: Path) -> list[Any]:
        with path.open("rb") as f:  # streamed to the engine, never read into memory
            return list(self.client.images.load(f))

    def _adopt_loaded(self, tarball: Tarball, loaded: list[Any], previous_id: str | None) -> None:
        """Check the loaded image is the one the name promises, and tag it."""
        name, ts = tarball.name, str(tarball.timestamp)
        repository, tag = image_for(name).split(":")
        for image in loaded:
            labels = image.labels or {}
            if labels.get(LABEL_ENV) == name and labels.get(LABEL_TIMESTAMP) == ts:
                image.tag(repository, tag)
                if previous_id is not None and previous_id != image.id:
                    self._remove_if_untagged(previous_id)
                return
        # A tarball saved with its tag may have moved hakuriver/<name>:base: move it back.
        if previous_id is not None:
            with contextlib.suppress(Exception):
                self.client.images.get(previous_id).tag(repository, tag)
        found = [
            f"{(i.labels or {}).get(LABEL_ENV)}@{(i.labels or {}).get(LABEL_TIMESTAMP)}"
            for i in loaded
        ]
        raise TarballRefused(
            f"tarball {tarball.path} holds no image labelled {LABEL_ENV}={name},"
            f" {LABEL_TIMESTAMP}={ts} (found {found or 'nothing'}): refused"
        )

    def _remove_if_untagged(self, image_id: str) -> None:
        import docker.errors

        try:
            if not self.client.images.get(image_id).tags:
                self.client.images.remove(image_id)
        except docker.errors.APIError as exc:  # a container still uses it: it stays
            log.info("kept the replaced image %s: %s", image_id[:19], exc)
