"""A job's rank on its node: the control folder, ``job.setup_done`` once, ``JobGo``.

A real agent (real process executor, or real Docker executor with the local busybox
image) runs ``events.jobs.rank_command`` scripts; the test plays the host over an
in-memory link (tests/support/agent_link.py) and steps the agent. A restart is a second
agent on the same data directory, as in tests/node_agent/test_agent.py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.agent_link import HostEnd, MemoryConnector, events_of
from support.docker_images import engine_or_skip
from support.waiting import async_wait_until

from events import link
from events.envelope import NewEvent
from events.jobs import CONTAINER_CONTROL, CONTAINER_WORKDIR, CONTROL_ENV, rank_command
from events.types import JobSetupDone, Mount, TaskFinished, TaskSpec
from node_agent.agent import Agent
from node_agent.executors.base import Executor
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities
from node_agent.probes import MachineInfo
from node_agent.settings import RunnerSettings

pytestmark = pytest.mark.timeout(90)

# A setup that waits for a gate file (named after the rank's task id) in GATES.
GATED_SETUP = 'echo setting up; while [ ! -e "GATES/gate-$HAKURIVER_TASK_ID" ]; do sleep 0.02; done'


@dataclass
class Node:
    """One node's data directory; each ``agent()`` is a new agent process on it."""

    root: Path
    connector: MemoryConnector
    client: Any = None  # a Docker client: the agent gets a Docker executor too
    seen: list[NewEvent] = field(default_factory=list)
    unacked: list[int] = field(default_factory=list)  # batches read and not acknowledged

    @property
    def settings(self) -> RunnerSettings:
        return RunnerSettings.from_mapping(
            {"paths": {"shared_dir": str(self.root / "shared")}},
            data_dir=str(self.root),
            name=f"n-{self.root.name[-20:]}",
        )

    def agent(self) -> Agent:
        settings = self.settings
        executors: dict[str, Executor] = {
            "process": ProcessExecutor(settings.state_dir / "process", facilities=HostFacilities())
        }
        if self.client is not None:
            from node_agent.executors.docker import DockerExecutor

            executors["docker"] = DockerExecutor(
                settings.state_dir / "docker", node=settings.node_name, client=self.client
            )
        return Agent(
            settings,
            executors=executors,
            machine=MachineInfo(cores=2, memory_bytes=1 << 30, numa=()),
            connect=self.connector,
        )

    @property
    def gates(self) -> Path:
        return self.root / "gates"

    def gated_setup(self) -> str:
        """A setup that ends once ``open`` is called for its rank."""
        return GATED_SETUP.replace("GATES", str(self.gates))

    def open(self, task_id: str) -> None:
        """Let a ``gated_setup`` end."""
        (self.gates / f"gate-{task_id}").touch()

    def output(self, task_id: str) -> str:
        path = self.root / "shared" / "task_outputs" / f"{task_id}.out"
        return path.read_text() if path.exists() else ""

    def control(self, task_id: str) -> Path:
        return self.settings.state_dir / "jobs" / task_id

    def collect(self, host: HostEnd) -> list[NewEvent]:
        """Every event the agent sent so far (kept across calls)."""
        messages = host.drain()
        self.unacked += [m.batch for m in messages if isinstance(m, link.EventBatch)]
        self.seen.extend(events_of(messages))
        return self.seen

    async def ack(self, host: HostEnd) -> None:
        """Acknowledge every batch read so far, as the host does once it committed them."""
        self.collect(host)
        for batch in self.unacked:
            await host.send(link.Ack(batch=batch, seqs=[]))
        self.unacked.clear()

    def setups(self, host: HostEnd) -> list[JobSetupDone]:
        return [e.event for e in self.collect(host) if isinstance(e.event, JobSetupDone)]

    def finished(self, host: HostEnd) -> dict[str, TaskFinished]:
        return {
            e.event.task_id: e.event
            for e in self.collect(host)
            if isinstance(e.event, TaskFinished)
        }


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    made = Node(tmp_path, MemoryConnector())
    made.gates.mkdir()
    yield made
    # Tasks outlive agents: a last one adopts what a test left running, and kills it.
    cleaner = ProcessExecutor(made.settings.state_dir / "process", facilities=HostFacilities())
    for adopted in await cleaner.adopt():
        if not adopted.ended:
            await cleaner.kill(adopted.task_id, grace_s=0)
    await cleaner.close()


def rank(
    task_id: str,
    setup: str | None,
    run: str,
    *,
    job_id: str = "j1234567",
    number: int = 0,
    workdir: Path | None = None,
    container: str | None = None,
    mounts: tuple[Mount, ...] = (),
    mount_roots: tuple[str, ...] | None = None,
) -> link.Run:
    """A ``Run`` for one rank of a job, as the host sends it."""
    command, args = rank_command(setup, run)
    spec = TaskSpec(
        command=command,
        args=args,
        env={"NODE_RANK": str(number), "GREETING": "hello"},
        batch_id="b",
        job_id=job_id,
        rank=number,
        workdir=str(workdir) if workdir else None,
        container=container,
        mounts=mounts,
        mount_roots=mount_roots,
    )
    return link.Run(task_id=task_id, spec=spec, cores=0)


async def test_a_rank_sets_up_reports_once_waits_for_go_then_runs_in_its_workdir(
    node: Node, tmp_path: Path
) -> None:
    workdir = tmp_path / "shared" / "jobs" / "j1234567" / "workdir"
    workdir.mkdir(parents=True)
    (workdir / "data.txt").write_text("from the workdir\n")
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        # Given a rank whose setup prints, and whose run prints where and who it is
        await host.send(
            rank(
                "t-r0",
                "echo setup in $(pwd)",
                'echo run in $(pwd) rank $NODE_RANK $GREETING; cat data.txt; echo "ctl=$'
                + CONTROL_ENV
                + '"',
                workdir=workdir,
                number=2,
            )
        )
        # When its setup has ended
        await async_wait_until(lambda: len(node.setups(host)) == 1, 20)
        # Then job.setup_done is reported with the job, the rank and the node
        (done,) = node.setups(host)
        assert (done.task_id, done.job_id, done.rank, done.node) == (
            "t-r0",
            "j1234567",
            2,
            agent.node,
        )
        # And the control folder is the rank's alone; run has not started: no GO yet
        folder = node.control("t-r0")
        assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
        assert os.lstat(folder).st_uid == os.geteuid()
        assert node.output("t-r0") == f"setup in {workdir}\n"
        assert "t-r0" in agent.running and not (folder / "go").exists()
        # When the host lets the job run
        await host.send(link.JobGo(task_id="t-r0"))
        await agent.run_until_idle(wait_for_tasks=True)
        # Then run ran in the workdir with the job's variables and its control folder
        assert node.output("t-r0") == (
            f"setup in {workdir}\nrun in {workdir} rank 2 hello\nfrom the workdir\nctl={folder}\n"
        )
        assert node.finished(host)["t-r0"].state == "completed"
        # And setup_done was reported exactly once; the folder is gone with the task
        assert len(node.setups(host)) == 1
        assert not folder.exists()
        assert not list((node.settings.state_dir / "jobs").iterdir())


async def test_a_failed_setup_fails_the_rank_with_its_code_and_reports_no_setup(
    node: Node,
) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        # Given a rank whose setup fails with 3
        await host.send(rank("t-bad", "echo broken; exit 3", "echo never"))
        # When it ends
        await agent.run_until_idle(wait_for_tasks=True)
        # Then the rank failed with the setup's exit code, said why, and never ran
        finished = node.finished(host)["t-bad"]
        assert (finished.state, finished.exit_code) == ("failed", 3)
        assert node.output("t-bad") == "broken\nhakuriver: setup failed with exit code 3\n"
        # And no job.setup_done was reported; the control folder is removed
        assert node.setups(host) == []
        assert not node.control("t-bad").exists()


async def test_a_go_that_comes_before_the_setup_ends_releases_the_rank_after_it(
    node: Node,
) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        # Given a rank whose setup is still running
        await host.send(rank("t-early", node.gated_setup(), "echo ran"))
        await async_wait_until(lambda: "setting up" in node.output("t-early"), 20)
        # When JobGo arrives first (and one for a task this agent does not run)
        await host.send(link.JobGo(task_id="t-early"))
        await host.send(link.JobGo(task_id="t-unknown"))
        await agent.run_until_idle()
        assert not node.control("t-unknown").exists()
        # And the setup ends afterwards
        node.open("t-early")
        await agent.run_until_idle(wait_for_tasks=True)
        # Then the rank ran and completed; its setup was reported once
        assert node.output("t-early") == "setting up\nran\n"
        assert node.finished(host)["t-early"].state == "completed"
        assert [s.task_id for s in node.setups(host)] == ["t-early"]


async def test_a_planted_go_symlink_is_never_followed(node: Node, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "created-through-the-link"
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        # Given a rank whose setup plants `go` as a symlink to a file outside its folder
        plant = f'ln -s {target} "${CONTROL_ENV}/go"'
        await host.send(rank("t-plant", plant, "echo ran"))
        await async_wait_until(lambda: len(node.setups(host)) == 1, 20)
        # When the host lets it run
        await host.send(link.JobGo(task_id="t-plant"))
        await agent.run_until_idle()
        # Then the agent created nothing through the link (the planted name counts as
        # done), and the rank, which only sees a dangling link, still waits
        assert not target.exists() and not target.is_symlink()
        assert (node.control("t-plant") / "go").is_symlink()
        assert "t-plant" in agent.running and "ran" not in node.output("t-plant")
        # And once killed, its folder goes with the task; the link's target folder stays
        await host.send(link.Kill(task_id="t-plant", grace_s=0))
        await agent.run_until_idle(wait_for_tasks=True)
        assert node.finished(host)["t-plant"].state == "killed"
        assert not node.control("t-plant").exists() and outside.is_dir()


async def test_a_restarted_agent_reports_a_setup_once_and_obeys_go(node: Node) -> None:
    gated = node.gated_setup()
    # Given an agent that reported one rank's setup, while another rank's setup runs
    async with node.agent().started() as first:
        host = await node.connector.accept()
        await host.greet()
        await host.send(rank("t-done", None, "echo first ran", number=0))
        await host.send(rank("t-later", gated, "echo later ran", number=1))
        await async_wait_until(lambda: [s.task_id for s in node.setups(host)] == ["t-done"], 20)
        await async_wait_until(lambda: "setting up" in node.output("t-later"), 20)
        # (everything it reported acknowledged: t-later's start can be put just after its
        # setup's first output, so the acks go on until the outbox is empty)
        assert first.outbox is not None
        deadline = time.monotonic() + 20
        while True:
            await node.ack(host)
            await first.run_until_idle()
            if await first.outbox.count() == 0:
                break
            assert time.monotonic() < deadline, "the outbox never emptied"
    # When the second rank's setup ends while no agent runs, and a new agent starts
    node.open("t-later")
    await async_wait_until(lambda: (node.control("t-later") / "setup.done").exists(), 20)
    node.seen.clear()
    node.unacked.clear()
    async with node.agent().started() as second:
        host = await node.connector.accept()
        hello = await host.greet()
        assert sorted(t.task_id for t in hello.running) == ["t-done", "t-later"]
        # Then it reports the setup that ended meanwhile, and not the one reported before
        await async_wait_until(lambda: len(node.setups(host)) == 1, 20)
        assert [(s.task_id, s.rank) for s in node.setups(host)] == [("t-later", 1)]
        # And it obeys JobGo for both adopted ranks
        await host.send(link.JobGo(task_id="t-done"))
        await host.send(link.JobGo(task_id="t-later"))
        await second.run_until_idle(wait_for_tasks=True)
        finished = node.finished(host)
        assert {t: f.state for t, f in finished.items()} == {
            "t-done": "completed",
            "t-later": "completed",
        }
        assert node.output("t-done") == "first ran\n"
        assert node.output("t-later") == "setting up\nlater ran\n"
        assert [s.task_id for s in node.setups(host)] == ["t-later"]
        # And both control folders are gone
        assert not list((node.settings.state_dir / "jobs").iterdir())


async def test_a_workdir_that_resolves_outside_the_allowed_folders_is_refused(
    node: Node, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    outside = tmp_path / "outside"
    outside.mkdir()
    # Given a user's workdir in the shared storage that is a symlink to a folder outside it
    planted = shared / "jobs" / "j7654321" / "workdir"
    planted.parent.mkdir(parents=True)
    planted.symlink_to(outside)
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        # When a task with that workdir starts, for a user whose mounts must lie in shared
        spec = TaskSpec(
            command="pwd", batch_id="b", workdir=str(planted), mount_roots=(str(shared),)
        )
        await host.send(link.Run(task_id="t-escape", spec=spec, cores=0))
        # And a task whose workdir resolves inside starts there
        inside = shared / "jobs" / "j1111111" / "workdir"
        inside.mkdir(parents=True)
        spec = TaskSpec(
            command="pwd", batch_id="b", workdir=str(inside), mount_roots=(str(shared),)
        )
        await host.send(link.Run(task_id="t-inside", spec=spec, cores=0))
        await agent.run_until_idle(wait_for_tasks=True)
        # Then the first failed to start, naming the folder it resolves to
        finished = node.finished(host)
        assert finished["t-escape"].state == "failed"
        assert f"resolves to {outside}" in finished["t-escape"].message
        assert node.output("t-escape") == ""
        assert finished["t-inside"].state == "completed"
        assert node.output("t-inside") == f"{inside}\n"


# -- the same barrier in a container -------------------------------------------------------


@pytest.fixture
async def docker_node(node: Node) -> AsyncIterator[Node]:
    node.client = engine_or_skip()
    yield node
    for container in node.client.containers.list(
        all=True, sparse=True, filters={"label": f"hakuriver.node={node.settings.node_name}"}
    ):
        container.remove(force=True)


@pytest.mark.docker
async def test_a_container_rank_waits_for_go_and_runs_in_the_mounted_workdir(
    docker_node: Node, tmp_path: Path
) -> None:
    node = docker_node
    workdir = tmp_path / "shared" / "jobs" / "j1234567" / "workdir"
    workdir.mkdir(parents=True)
    (workdir / "data.txt").write_text("from the workdir\n")
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        # Given a container rank with a setup and a run
        await host.send(
            rank(
                "t-c0",
                "echo setup in $(pwd); echo made > made-by-setup",
                'echo run in $(pwd) rank $NODE_RANK; cat data.txt; echo "ctl=$' + CONTROL_ENV + '"',
                workdir=workdir,
                number=1,
                container="busybox",
                mount_roots=(str(tmp_path / "shared"),),
            )
        )
        # When its setup has ended, it is reported once and run has not started
        await async_wait_until(lambda: len(node.setups(host)) == 1, 60)
        assert node.setups(host)[0].rank == 1
        await async_wait_until(lambda: "setup in" in node.output("t-c0"), 20)
        assert "run in" not in node.output("t-c0") and "t-c0" in agent.running
        # When the host lets it run
        await host.send(link.JobGo(task_id="t-c0"))
        await agent.run_until_idle(wait_for_tasks=True, deadline_s=60)
        # Then it ran in the workdir, mounted read-write, with its control folder mounted
        assert node.finished(host)["t-c0"].state == "completed"
        assert node.output("t-c0") == (
            f"setup in {CONTAINER_WORKDIR}\nrun in {CONTAINER_WORKDIR} rank 1\n"
            f"from the workdir\nctl={CONTAINER_CONTROL}\n"
        )
        assert (workdir / "made-by-setup").read_text() == "made\n"
        assert len(node.setups(host)) == 1
        assert not node.control("t-c0").exists()


@pytest.mark.docker
async def test_a_container_rank_whose_setup_fails_reports_no_setup(docker_node: Node) -> None:
    node = docker_node
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        await host.send(rank("t-cbad", "exit 4", "echo never", container="busybox"))
        await agent.run_until_idle(wait_for_tasks=True, deadline_s=60)
        finished = node.finished(host)["t-cbad"]
        assert (finished.state, finished.exit_code) == ("failed", 4)
        assert node.setups(host) == [] and not node.control("t-cbad").exists()


# -- ranks run as their owners (run_tasks_as = "owner") ------------------------------------


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A folder every account can enter (tmp_path's parents are root's alone)."""
    made = Path(tempfile.mkdtemp(prefix="hakuriver-ranks-"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="running a rank as another account needs root")
async def test_an_owner_rank_gets_a_folder_of_its_own_that_it_can_reach(
    tmp_path: Path, reachable: Path
) -> None:
    # Given an owner-mode agent whose local temp folder owners can reach
    settings = RunnerSettings.from_mapping(
        {
            "paths": {"shared_dir": str(tmp_path / "shared"), "local_temp_dir": str(reachable)},
            "runner": {"run_tasks_as": "owner"},
        },
        data_dir=str(tmp_path),
        name="n-owner",
    )
    connector = MemoryConnector()
    agent = Agent(
        settings,
        executors={
            "process": ProcessExecutor(settings.state_dir / "process", facilities=HostFacilities())
        },
        machine=MachineInfo(cores=2, memory_bytes=1 << 30, numa=()),
        connect=connector,
    )
    nobody = pwd.getpwnam("nobody")
    node = Node(tmp_path, connector)
    async with agent.started():
        host = await connector.accept()
        await host.greet()
        # When a rank owned by `nobody` starts
        command = rank("t-own", "id -u", "id -u")
        spec = msgspec.structs.replace(command.spec, owner="nobody")
        await host.send(msgspec.structs.replace(command, spec=spec))
        await async_wait_until(lambda: len(node.setups(host)) == 1, 20)
        # Then its folder is the owner's alone, in a root only the runner writes
        root = reachable / ".hakuriver-jobs"
        folder = root / "t-own"
        assert (os.lstat(root).st_uid, stat.S_IMODE(os.lstat(root).st_mode)) == (0, 0o711)
        found = os.lstat(folder)
        assert (found.st_uid, stat.S_IMODE(found.st_mode)) == (nobody.pw_uid, 0o700)
        # And the rank, as its owner, ran its setup there and runs once released
        await host.send(link.JobGo(task_id="t-own"))
        await agent.run_until_idle(wait_for_tasks=True)
        assert node.finished(host)["t-own"].state == "completed"
        assert node.output("t-own") == f"{nobody.pw_uid}\n{nobody.pw_uid}\n"
        assert not folder.exists()


def test_a_control_root_planted_by_someone_else_is_moved_aside(tmp_path: Path) -> None:
    # In owner mode the root lies in the local temp folder, where users' tasks write: a
    # symlink (or a folder) planted there first must not keep ranks from starting, nor be
    # followed.
    from node_agent.ranks import TRAVERSE_ROOT, _ensure_root

    target = tmp_path / "elsewhere"
    target.mkdir()
    root = tmp_path / "local_temp" / ".hakuriver-jobs"
    root.parent.mkdir()
    root.symlink_to(target)
    _ensure_root(root, TRAVERSE_ROOT)
    assert root.is_dir() and not root.is_symlink()
    assert (root.stat().st_mode & 0o777) == TRAVERSE_ROOT
    assert list(target.iterdir()) == []  # nothing made through the link
    moved = [p for p in root.parent.iterdir() if p.name.startswith(".hakuriver-jobs.planted-")]
    assert len(moved) == 1 and moved[0].is_symlink()
