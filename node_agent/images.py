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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from node_agent.executors.docker_options import image_for

log = logging.getLogger("hakuriver.images")


# (device, inode, size, mtime) of the tarball and of its digest file (None: absent).
FileStat = tuple[int, int, int, int]
Fingerprint = tuple[FileStat, FileStat | None]


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


def _stat(path: Path) -> FileStat | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


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
        local_id, local_ts = await asyncio.to_thread(self.local_version, env)
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

    # -- the watcher (node_agent/image_watch.py) -------------------------------------------

    async def watch(self, stop: asyncio.Event) -> None:
        """Pre-load tarballs as they appear in the folder, until ``stop`` is set."""
        from node_agent.image_watch import TarballWatcher

        await TarballWatcher(self).run(stop)

    # -- blocking helpers (worker threads) -------------------------------------------------

    def listing(self) -> dict[str, FileStat]:
        """Every final tarball and digest file in the folder, with its identity."""
        found: dict[str, FileStat] = {}
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

    def local_version(self, env: str) -> tuple[str | None, int | None]:
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
