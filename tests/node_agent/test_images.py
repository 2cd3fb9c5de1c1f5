"""Environment tarball sync against a real engine (marker ``docker``; mandatory in CI).

Tarballs are made the way the host makes them: a container of the busybox test
image gets a file, is committed with the environment labels, saved into
``<name>-<ts>.tar`` under a dot-name ending ``.tmp`` and renamed into place after
its ``.sha256``. The image is then removed here, as if the host were another
machine, so the sync has to load it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import shutil
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from support.docker_images import BUSYBOX_IMAGE, engine_or_skip
from support.waiting import async_wait_until

from events import link
from events.tarballs import parse_tarball_name
from events.types import EnvSynced, TaskFinished, TaskSpec, TaskStarted
from node_agent.agent import Agent
from node_agent.cpus import CpuAllocator
from node_agent.executors.docker import DockerExecutor
from node_agent.images import EnvSyncFailed, ImageSync
from node_agent.outbox import AsyncOutbox
from node_agent.probes import MachineInfo
from node_agent.settings import RunnerSettings

pytestmark = [pytest.mark.docker, pytest.mark.timeout(60)]


@dataclass
class Host:
    """Packages environments into the shared folder, as the control plane does."""

    client: Any
    folder: Path
    names: list[str] = field(default_factory=list)

    def env_name(self) -> str:
        name = f"test-env-{uuid.uuid4().hex[:10]}"  # a '-' in the name, as users write
        self.names.append(name)
        return name

    def package(
        self,
        name: str,
        ts: int,
        content: str,
        *,
        label_ts: int | None = None,
        named: bool = True,
        digest: bool = True,
        truncate: bool = False,
    ) -> Path:
        """Write ``<name>-<ts>.tar`` (+ ``.sha256``) holding ``/env.txt`` = ``content``."""
        repository = f"hakuriver/{name}"
        node_image = self.image_id(name)  # this machine plays the node too: keep its tag
        container = self.client.containers.create(BUSYBOX_IMAGE, ["true"])
        try:
            container.put_archive("/", _tar_of("env.txt", content))
            image = container.commit(
                changes=[
                    f"LABEL hakuriver.env={name}",
                    f"LABEL hakuriver.env_timestamp={ts if label_ts is None else label_ts}",
                ]
            )
        finally:
            container.remove(force=True)
        final = self.folder / f"{name}-{ts}.tar"
        tmp = self.folder / f".{final.name}.tmp"
        digest_of = hashlib.sha256()
        try:
            if named:
                image.tag(repository, "base")
            self.folder.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as out:
                for chunk in image.save(named=named):
                    digest_of.update(chunk)
                    out.write(chunk)
        finally:
            self.client.images.remove(image.id, force=True)
            if node_image is not None:
                self.client.images.get(node_image).tag(repository, "base")
        if truncate:
            with tmp.open("r+b") as out:
                out.truncate(tmp.stat().st_size // 2)
        if digest:
            sha_tmp = self.folder / f".{final.name}.sha256.tmp"
            sha_tmp.write_text(f"{digest_of.hexdigest()}  {final.name}\n")
            sha_tmp.rename(final.with_name(final.name + ".sha256"))
        tmp.rename(final)
        return final

    def image_id(self, name: str) -> str | None:
        try:
            return str(self.client.images.get(f"hakuriver/{name}:base").id)
        except docker.errors.ImageNotFound:
            return None

    def run(self, name: str) -> str:
        """What ``/env.txt`` says in a container of the environment's image."""
        out = self.client.containers.run(f"hakuriver/{name}:base", ["cat", "/env.txt"], remove=True)
        return bytes(out).decode()

    def cleanup(self) -> None:
        """Remove the images of this test's environments (and only those)."""
        for name in self.names:
            for image in self.client.images.list(filters={"label": f"hakuriver.env={name}"}):
                with contextlib.suppress(docker.errors.NotFound):
                    self.client.images.remove(image.id, force=True)


def _tar_of(filename: str, content: str) -> bytes:
    data = content.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(filename)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def client() -> Any:
    return engine_or_skip()


@pytest.fixture
def host(tmp_path: Path, client: Any) -> Iterator[Host]:
    made = Host(client, tmp_path / "shared" / "hakuriver-containers")
    yield made
    made.cleanup()


@dataclass
class Synced:
    """An ImageSync and the env.synced events it reported."""

    sync: ImageSync
    events: list[EnvSynced]


@pytest.fixture
def synced(host: Host) -> Synced:
    events: list[EnvSynced] = []

    async def record(event: EnvSynced) -> None:
        events.append(event)

    return Synced(ImageSync(host.client, host.folder, node="n1", on_synced=record), events)


def count_calls(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> list[int]:
    """Count the calls of ``target.name`` (one item per call)."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(target, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, counted)
    return calls


def test_tarball_names_split_the_timestamp_off_the_last_dash() -> None:
    assert parse_tarball_name("my-env.v2-1700000000.tar") == ("my-env.v2", 1700000000)
    for ignored in (
        ".my-env-1.tar.tmp",
        ".my-env-1.tar",
        "my-env-1.tar.tmp",
        "my-env-1.tar.sha256",
        "my-env.tar",
        "My-env-1.tar",
        "my-env-1x.tar",
    ):
        assert parse_tarball_name(ignored) is None, ignored


async def test_a_missing_image_is_loaded_from_its_tarball(host: Host, synced: Synced) -> None:
    # Given a packaged environment that is not on the node
    name = host.env_name()
    tar = await asyncio.to_thread(host.package, name, 1_700_000_001, "v1\n")
    assert host.image_id(name) is None
    # When a task needs it
    result = await synced.sync.ensure(name)
    # Then it is loaded, tagged, runs, and the load is reported with its digest
    assert result is not None and result.loaded and result.timestamp == 1_700_000_001
    assert await asyncio.to_thread(host.run, name) == "v1\n"
    [event] = synced.events
    assert (event.name, event.node, event.timestamp) == (name, "n1", 1_700_000_001)
    assert event.sha256 == hashlib.sha256(tar.read_bytes()).hexdigest()
    assert event.duration_s > 0


async def test_a_current_image_is_not_loaded_again_nor_hashed(
    host: Host, synced: Synced, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = host.env_name()
    await asyncio.to_thread(host.package, name, 1_700_000_001, "v1\n")
    hashes = count_calls(monkeypatch, synced.sync, "_check_digest")
    loads = count_calls(monkeypatch, synced.sync, "_docker_load")
    await synced.sync.ensure(name)
    assert (len(hashes), len(loads), len(synced.events)) == (1, 1, 1)
    # When the next task of the environment starts
    result = await synced.sync.ensure(name)
    # Then nothing is hashed, loaded or reported
    assert result is not None and not result.loaded and result.timestamp == 1_700_000_001
    assert (len(hashes), len(loads), len(synced.events)) == (1, 1, 1)


async def test_an_image_removed_behind_the_agent_is_loaded_without_rehashing(
    host: Host, synced: Synced, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = host.env_name()
    await asyncio.to_thread(host.package, name, 1_700_000_001, "v1\n", named=False)
    hashes = count_calls(monkeypatch, synced.sync, "_check_digest")
    await synced.sync.ensure(name)
    host.cleanup()  # someone ran `docker rmi`
    result = await synced.sync.ensure(name)
    assert result is not None and result.loaded
    assert await asyncio.to_thread(host.run, name) == "v1\n"
    assert len(hashes) == 1 and len(synced.events) == 2


async def test_a_newer_tarball_replaces_the_image(host: Host, synced: Synced) -> None:
    name = host.env_name()
    await asyncio.to_thread(host.package, name, 1_700_000_001, "v1\n")
    await synced.sync.ensure(name)
    old = host.image_id(name)
    # When the host packages the environment again (older tarball pruned or not)
    await asyncio.to_thread(host.package, name, 1_700_000_002, "v2\n")
    result = await synced.sync.ensure(name)
    # Then the newest one is loaded, and the replaced image is gone
    assert result is not None and result.loaded and result.timestamp == 1_700_000_002
    assert await asyncio.to_thread(host.run, name) == "v2\n"
    assert [e.timestamp for e in synced.events] == [1_700_000_001, 1_700_000_002]
    assert old is not None and host.image_id(name) != old
    with pytest.raises(docker.errors.ImageNotFound):
        host.client.images.get(old)


async def test_a_truncated_tarball_is_refused_and_the_previous_image_keeps_working(
    host: Host, synced: Synced, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = host.env_name()
    await asyncio.to_thread(host.package, name, 1_700_000_001, "v1\n")
    await synced.sync.ensure(name)
    previous = host.image_id(name)
    # Given a newer tarball whose bytes do not match its digest
    bad = await asyncio.to_thread(host.package, name, 1_700_000_002, "v2\n", truncate=True)
    hashes = count_calls(monkeypatch, synced.sync, "_check_digest")
    # When a task needs the environment
    result = await synced.sync.ensure(name)
    # Then the tarball is refused, said why, and the task runs on the previous image
    assert result is not None and not result.loaded and result.timestamp == 1_700_000_001
    [why] = result.refused
    assert str(bad) in why and "does not match its digest" in why
    assert host.image_id(name) == previous
    assert await asyncio.to_thread(host.run, name) == "v1\n"
    assert len(synced.events) == 1
    # And the corrupt file is not hashed again for every task
    again = await synced.sync.ensure(name)
    assert again is not None and again.refused == result.refused and len(hashes) == 1


async def test_a_corrupt_tarball_without_a_previous_image_fails_clearly(
    host: Host, synced: Synced
) -> None:
    name = host.env_name()
    bad = await asyncio.to_thread(host.package, name, 1_700_000_001, "v1\n", truncate=True)
    with pytest.raises(EnvSyncFailed, match="does not match its digest") as failed:
        await synced.sync.ensure(name)
    assert str(bad) in str(failed.value) and "create-tar" in str(failed.value)
    assert host.image_id(name) is None and synced.events == []


async def test_a_tarball_without_its_digest_is_refused(host: Host, synced: Synced) -> None:
    name = host.env_name()
    await asyncio.to_thread(host.package, name, 1_700_000_001, "v1\n", digest=False)
    with pytest.raises(EnvSyncFailed, match=r"has no .*\.tar\.sha256 beside it"):
        await synced.sync.ensure(name)
    assert host.image_id(name) is None and synced.events == []


async def test_a_tarball_whose_label_disagrees_with_its_name_is_refused(
    host: Host, synced: Synced
) -> None:
    name = host.env_name()
    await asyncio.to_thread(host.package, name, 1_700_000_001, "v1\n")
    await synced.sync.ensure(name)
    previous = host.image_id(name)
    # A named tarball moves hakuriver/<name>:base when loaded: the sync moves it back.
    await asyncio.to_thread(host.package, name, 1_700_000_005, "v5\n", label_ts=1_700_000_004)
    result = await synced.sync.ensure(name)
    assert result is not None and not result.loaded
    [why] = result.refused
    assert "hakuriver.env_timestamp=1700000005" in why
    assert host.image_id(name) == previous
    assert await asyncio.to_thread(host.run, name) == "v1\n"


async def test_concurrent_tasks_of_one_environment_share_one_load(
    host: Host, synced: Synced, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = host.env_name(), host.env_name()
    await asyncio.to_thread(host.package, first, 1_700_000_001, "first\n")
    await asyncio.to_thread(host.package, second, 1_700_000_001, "second\n")
    loads = count_calls(monkeypatch, synced.sync, "_docker_load")
    results = await asyncio.gather(
        *(synced.sync.ensure(first) for _ in range(5)),
        *(synced.sync.ensure(second) for _ in range(5)),
    )
    assert len(loads) == 2
    assert sorted(e.name for e in synced.events) == sorted([first, second])
    for name in (first, second):
        mine = [r for r in results if r is not None and r.name == name]
        assert len(mine) == 5 and sum(r.loaded for r in mine) == 1
        assert all(r.timestamp == 1_700_000_001 for r in mine)


async def test_no_tarball_and_no_image_fails_with_what_to_do(host: Host, synced: Synced) -> None:
    name = host.env_name()
    with pytest.raises(EnvSyncFailed) as failed:
        await synced.sync.ensure(name)
    message = str(failed.value)
    assert "no image on node n1" in message and str(host.folder) in message
    assert f"hakuriver docker create-tar {name}" in message


async def test_a_local_image_without_a_tarball_is_used_as_is(synced: Synced) -> None:
    result = await synced.sync.ensure("busybox")
    assert result is not None and not result.loaded and result.timestamp is None
    assert await synced.sync.ensure("library/busybox:latest") is None  # not an environment


async def test_the_watcher_preloads_a_tarball_renamed_into_place(
    host: Host, synced: Synced, caplog: pytest.LogCaptureFixture
) -> None:
    # rescan_s is long: only the file-system event can trigger the load in time.
    synced.sync.rescan_s = 60
    stop = asyncio.Event()
    watcher = asyncio.create_task(synced.sync.watch(stop))
    try:
        await asyncio.wait_for(synced.sync.watching.wait(), 10)
        assert host.folder.is_dir()  # created by the watcher
        name = host.env_name()
        with caplog.at_level(logging.WARNING, logger="hakuriver.images"):
            await asyncio.to_thread(host.package, name, 1_700_000_001, "preloaded\n")
            await async_wait_until(lambda: len(synced.events) == 1, 20)
        assert synced.events[0].name == name
        assert await asyncio.to_thread(host.run, name) == "preloaded\n"
        # The .tmp files written before the renames triggered nothing (no refusal).
        assert not caplog.records

        # When the folder disappears, the watcher watches the new one.
        await asyncio.to_thread(shutil.rmtree, host.folder)
        await async_wait_until(lambda: host.folder.is_dir() and synced.sync.watching.is_set(), 20)
        await asyncio.to_thread(host.package, name, 1_700_000_002, "again\n")
        await async_wait_until(lambda: len(synced.events) == 2, 20)
        assert await asyncio.to_thread(host.run, name) == "again\n"
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 10)
    assert not synced.sync.watching.is_set()


async def test_at_startup_the_watcher_refreshes_only_stale_images(
    host: Host, synced: Synced
) -> None:
    # Given an environment this node has, at an older timestamp, and one it never had
    stale, unused = host.env_name(), host.env_name()
    await asyncio.to_thread(host.package, stale, 1_700_000_001, "old\n")
    await synced.sync.ensure(stale)
    await asyncio.to_thread(host.package, stale, 1_700_000_002, "new\n")
    await asyncio.to_thread(host.package, unused, 1_700_000_001, "unused\n")
    # When the agent starts watching
    stop = asyncio.Event()
    watcher = asyncio.create_task(synced.sync.watch(stop))
    try:
        await async_wait_until(lambda: len(synced.events) == 2, 20)
        # Then the stale one is refreshed and the other left for its first task
        assert synced.events[1].name == stale and synced.events[1].timestamp == 1_700_000_002
        await asyncio.wait_for(synced.sync.watching.wait(), 10)
        assert host.image_id(unused) is None
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 10)


# -- through the agent -----------------------------------------------------------------------


@pytest.fixture
async def agent(tmp_path: Path, client: Any, host: Host) -> AsyncIterator[Agent]:
    settings = RunnerSettings.from_mapping(
        {"paths": {"shared_dir": str(tmp_path / "shared")}}, data_dir=str(tmp_path), name="n1"
    )
    node = f"test-{tmp_path.name}"
    made = Agent(
        settings,
        executors={"docker": DockerExecutor(tmp_path / "state", node=node, client=client)},
        machine=MachineInfo(cores=2, memory_bytes=1 << 30, numa=()),
    )
    made.outbox = await AsyncOutbox.open(tmp_path / "outbox.sqlite")
    made.cpus = CpuAllocator(2, ())
    made.images = ImageSync(client, settings.tarball_dir, node=made.node, on_synced=made.emit)
    assert settings.tarball_dir == host.folder
    yield made
    for watcher in made._watchers.values():
        watcher.cancel()
    for executor in made.executors.values():
        await executor.close()
    await made.outbox.close()
    for container in client.containers.list(
        all=True, sparse=True, filters={"label": f"hakuriver.node={node}"}
    ):
        container.remove(force=True)


def run_in(env: str, task_id: str) -> link.Run:
    spec = TaskSpec(command="cat", args=("/env.txt",), container=env, batch_id="b")
    return link.Run(task_id=task_id, spec=spec, cores=1)


async def test_the_agent_syncs_the_environment_before_starting_a_task(
    agent: Any, host: Host, tmp_path: Path
) -> None:
    name = host.env_name()
    await asyncio.to_thread(host.package, name, 1_700_000_001, "from the tarball\n")
    await agent.start_task(run_in(name, "t-sync"))
    # The task's watcher reports task.finished, then ends.
    await asyncio.wait_for(agent._watchers["t-sync"], 30)
    events = [e.event for e in await agent.outbox.pending()]
    assert [type(e) for e in events] == [EnvSynced, TaskStarted, TaskFinished]
    assert events[0].name == name and events[2].state == "completed"
    out = tmp_path / "shared" / "task_outputs" / "t-sync.out"
    assert out.read_text() == "from the tarball\n"


async def test_an_environment_without_an_image_fails_the_task_and_frees_its_cpus(
    agent: Any, host: Host
) -> None:
    name = host.env_name()
    await agent.start_task(run_in(name, "t-none"))
    [event] = [e.event for e in await agent.outbox.pending()]
    assert isinstance(event, TaskFinished) and event.state == "failed"
    assert f"hakuriver docker create-tar {name}" in event.message
    assert agent.cpus.taken == {} and "t-none" not in agent.running
    assert "t-none" not in agent.by_task
