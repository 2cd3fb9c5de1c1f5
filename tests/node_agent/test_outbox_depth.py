"""The outbox's depth (issue 18, item 7): kept with each write, so a heartbeat reports it
without a query, and always what the file holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.factories import started, submitted

from node_agent.outbox import Outbox

pytestmark = pytest.mark.timeout(60)


def test_the_depth_follows_puts_resends_and_acks(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    first = [submitted(), started("t1"), submitted()]
    box.put(first)
    assert box.depth == box.count() == 3
    # a re-put of pending events adds nothing; a new one does
    box.put([*first, submitted()])
    assert box.depth == box.count() == 4
    # acks remove what they name; an unknown or already acked id changes nothing
    box.ack([first[0].id, first[1].id, "unknown", first[0].id])
    assert box.depth == box.count() == 2
    box.close()
    # and a reopened outbox starts from what its file holds
    again = Outbox(tmp_path / "outbox.sqlite")
    assert again.depth == again.count() == 2
    again.close()
