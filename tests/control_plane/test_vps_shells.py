"""The host's ``vps shell`` sessions against a real control plane (its DuckDB log in
``tmp_path``, no server): which agent link a session belongs to, the per-user cap, what
the log ends, and a stop that waits for every close to be recorded.

The agent's side is a link that keeps what it is sent (as test_store_failing_link.py's
socket does): these tests are about the host's bookkeeping, not the relay's bytes
(tests/e2e/test_vps_shell_relay.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.decisions import principal
from support.waiting import async_wait_until

from control_plane import vps_shells
from control_plane.commands import OpenSshSession, RecordFacts
from control_plane.errors import Conflict, TooMany, Unavailable
from control_plane.hub import ControlPlane
from control_plane.settings import HostSettings
from control_plane.vps_shells import ShellSession, VpsShells
from events import link
from events.types import (
    NodeRegistered,
    TaskPlaced,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    UserCreated,
)

pytestmark = pytest.mark.timeout(60)

NODE = "n1"
TASK = "01aaaaaa-0001-7bbb-8ccc-dddddddddddd"


class KeptLink:
    """An agent's link as the host sees it: keeps what it is sent; answers no ping (so a
    newer link replaces it); ``on_send`` runs inside a send, as a drop may."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[link.Message] = []
        self.closed: str | None = None
        self.on_send: object = None

    async def send(self, message: link.Message) -> bool:
        self.sent.append(message)
        if callable(self.on_send):
            self.on_send()
        return self.closed is None

    async def close(self, reason: str) -> None:
        self.closed = reason

    async def alive(self, within_s: float) -> bool:
        return False


@contextlib.asynccontextmanager
async def host_with_a_vps(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A control plane whose log has node n1 and alice's VPS running there."""
    settings = HostSettings.from_mapping(
        {"paths": {"shared_dir": str(tmp_path / "shared")}}, data_dir=str(tmp_path / "data")
    )
    cp = await ControlPlane.open(settings)
    try:
        spec = TaskSpec(task_type="vps", command="", container="vps", batch_id="b", owner="alice")
        facts = (
            NodeRegistered(node=NODE, address="10.0.0.1", cores=4, memory_bytes=1 << 30),
            UserCreated(name="alice"),
            TaskSubmitted(task_id=TASK, spec=spec),
            TaskPlaced(task_id=TASK, node=NODE, cores=1),
            TaskStarted(task_id=TASK, node=NODE),
        )
        await cp.execute(RecordFacts(events=facts))
        assert cp.state.tasks[TASK].state == "running"
        yield cp
    finally:
        await cp.close()


def opening(session_id: str = "s1") -> OpenSshSession:
    return OpenSshSession(task=TASK, actor=principal("alice"), session_id=session_id, via="shell")


async def test_a_session_belongs_to_the_link_its_open_went_out_on(tmp_path: Path) -> None:
    async with host_with_a_vps(tmp_path) as cp:
        old, new = KeptLink("old"), KeptLink("new")
        assert await cp.attach(NODE, old) is None
        # Given a shell being opened while another decision holds the gate
        async with cp._gate.exclusive():
            pending = asyncio.create_task(vps_shells._open(cp, opening()))
            await async_wait_until(lambda: len(cp.shells) == 1, deadline_s=5)
            # When the node's link is replaced before the decision's ShellOpen goes out
            assert await cp.attach(NODE, new) is None
        session = await pending
        # Then it went out on the new link, and the session is that link's
        assert [type(m) for m in new.sent] == [link.ShellOpen] and not old.sent
        assert session.link is new
        # And when the new link drops, the session ends
        cp.detach(NODE, new)
        assert session.cut.is_set() and "link dropped" in session.reason


async def test_a_link_that_drops_while_the_open_goes_out_ends_the_session(
    tmp_path: Path,
) -> None:
    async with host_with_a_vps(tmp_path) as cp:
        dropping = KeptLink("dropping")
        dropping.on_send = lambda: cp.detach(NODE, dropping)  # gone before the send returns
        assert await cp.attach(NODE, dropping) is None
        with pytest.raises(Conflict) as refused:
            await vps_shells._open(cp, opening())
        assert "link dropped" in refused.value.message and refused.value.field == "task"
        # Nothing is left open, and the close is recorded
        assert len(cp.shells) == 0
        closes = await cp.store.read(after=0)
        assert [r.kind for r in closes][-2:] == ["ssh.session_opened", "ssh.session_closed"]


async def test_stop_returns_once_the_relays_recorded_their_closes(tmp_path: Path) -> None:
    async with host_with_a_vps(tmp_path) as cp:
        agent = KeptLink("agent")
        assert await cp.attach(NODE, agent) is None
        sessions = [await vps_shells._open(cp, opening(f"s{i}")) for i in range(2)]

        async def relay_of(session: ShellSession) -> None:
            """What ``relay`` does once its session is cut: record the end."""
            await session.cut.wait()
            await vps_shells._end(cp, session)

        relays = [asyncio.create_task(relay_of(s)) for s in sessions]
        await cp.shells.stop("host stopping")
        # Then, when stop returns, both closes are already in the log
        recorded = [r for r in await cp.store.read(after=0) if r.kind == "ssh.session_closed"]
        assert sorted(r.event.session_id for r in recorded) == ["s0", "s1"]  # type: ignore[attr-defined]
        assert {r.event.reason for r in recorded} == {"host stopping"}  # type: ignore[attr-defined]
        await asyncio.gather(*relays)
        # And a shell asked for meanwhile is refused, saying why
        with pytest.raises(Unavailable, match="stopping"):
            await vps_shells._open(cp, opening("late"))


def test_a_user_has_at_most_per_user_shells_over_every_node() -> None:
    async def scenario() -> None:
        shells = VpsShells(per_user=2)
        shells.register(_session("n1", "a", "alice"))
        shells.register(_session("n2", "b", "alice"))
        shells.register(_session("n1", "c", "bob"))  # another user's count is their own
        with pytest.raises(TooMany) as refused:
            shells.register(_session("n3", "d", "alice"))
        assert refused.value.field == "task" and refused.value.status == 429
        assert "alice has 2 shells open" in refused.value.message

    asyncio.run(scenario())


def _session(node: str, session_id: str, user: str) -> ShellSession:
    command = OpenSshSession(task="1", actor=principal(user), session_id=session_id)
    return ShellSession(command, "t1", node, None)
