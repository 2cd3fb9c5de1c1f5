"""Pre-loading environment tarballs as they appear in the shared folder.

``ImageSync.watch`` runs a ``TarballWatcher``: at startup it refreshes the environments
whose local image is older than a tarball; then it watches the folder (inotify through
watchfiles, plus a re-listing every ``rescan_s`` seconds for NFS, whose writes from
another machine raise no event) and pre-loads every environment whose files are new or
changed, with ``ImageSync.ensure`` (so a pre-load and a task's start share one load).
See node_agent/images.py for the rules of a load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from watchfiles import Change, awatch

from events.tarballs import DIGEST_SUFFIX, parse_tarball_name
from node_agent.images import EnvSyncFailed, FileStat, ImageSync

log = logging.getLogger("hakuriver.images")


class TarballWatcher:
    """One watch of ``sync``'s folder, pre-loading what appears, until stopped."""

    def __init__(self, sync: ImageSync) -> None:
        self.sync = sync
        self._preloads: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Pre-load tarballs as they appear in the folder, until ``stop`` is set."""
        # awatch sets the event it is given when cancelled: keep the caller's untouched.
        halt = asyncio.Event()
        relay = asyncio.create_task(stop.wait())
        relay.add_done_callback(lambda _: halt.set())
        try:
            known: dict[str, FileStat] = {}
            try:
                known = await self._list_files()
                self._preload(await self._stale(known))
            except Exception as exc:  # the watch below re-lists; a task start still syncs
                log.warning("scanning %s at startup failed: %s", self.sync.tar_dir, exc)
            backoff = 0.5
            while not halt.is_set():
                try:
                    known = await self._watch_folder(halt, known)
                    backoff = 0.5
                except Exception as exc:
                    log.warning("watching %s failed (%s); retrying", self.sync.tar_dir, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(halt.wait(), backoff)
                    backoff = min(backoff * 2, self.sync.rescan_s)
        finally:
            self.sync.watching.clear()
            relay.cancel()
            for task in list(self._preloads):
                task.cancel()
            await asyncio.gather(*self._preloads, return_exceptions=True)

    async def _watch_folder(
        self, halt: asyncio.Event, known: dict[str, FileStat]
    ) -> dict[str, FileStat]:
        """Watch the folder until it disappears or is replaced; the last listing."""
        await asyncio.to_thread(self.sync.tar_dir.mkdir, parents=True, exist_ok=True)
        identity = await asyncio.to_thread(_identity, self.sync.tar_dir)
        folder = str(self.sync.tar_dir)  # its own deletion wakes the watcher too
        # Files that arrived while the folder was not watched.
        known = await self._relist(known)
        self.sync.watching.set()
        # No await between set() and awatch's first step, which starts the inotify
        # watch before it suspends: whoever waits on ``watching`` resumes after that.
        try:
            async for _ in awatch(
                self.sync.tar_dir,
                watch_filter=lambda change, path: path == folder or _watched(change, path),
                stop_event=halt,
                step=50,
                rust_timeout=max(1, int(self.sync.rescan_s * 1000)),
                yield_on_timeout=True,
                recursive=False,
            ):
                if await asyncio.to_thread(_identity, self.sync.tar_dir) != identity:
                    log.info("%s disappeared or was replaced; watching it again", self.sync.tar_dir)
                    break
                known = await self._relist(known)
        finally:
            self.sync.watching.clear()
        return known

    async def _relist(self, known: dict[str, FileStat]) -> dict[str, FileStat]:
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

    async def _list_files(self) -> dict[str, FileStat]:
        return await asyncio.to_thread(self.sync.listing)

    async def _stale(self, listing: dict[str, FileStat]) -> set[str]:
        """Environments whose local image exists and is older than a tarball."""
        newest: dict[str, int] = {}
        for filename in listing:
            parsed = parse_tarball_name(filename)
            if parsed is not None:
                newest[parsed[0]] = max(parsed[1], newest.get(parsed[0], -1))
        stale = set()
        for name, timestamp in newest.items():
            try:
                local_id, local_ts = await asyncio.to_thread(self.sync.local_version, name)
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
            await self.sync.ensure(name)
        except EnvSyncFailed as exc:
            log.warning("pre-loading environment %s: %s", name, exc)
        except Exception:
            log.exception("pre-loading environment %s failed", name)


def _watched(change: Change, path: str) -> bool:
    """watchfiles filter: final tarball and digest names (never dot-files or *.tmp)."""
    filename = os.path.basename(path)
    filename = filename.removesuffix(DIGEST_SUFFIX)
    return change != Change.deleted and parse_tarball_name(filename) is not None


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = folder.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)
