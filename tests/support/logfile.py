"""Reading a stopped control plane's log file back, for checks after a run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from events.envelope import Recorded
from events.store import EventStore


def recorded_events(db_file: Path) -> list[Recorded]:
    """Every event in the log, in seq order (the host must be stopped)."""

    async def read() -> list[Recorded]:
        store = await EventStore.open(db_file)
        try:
            return await store.read(after=0)
        finally:
            await store.close()

    return asyncio.run(read())
