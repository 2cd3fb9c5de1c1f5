"""A host killed between unpacking a job's workdir and recording the job leaves a folder
no job owns: the next start removes it, and keeps every recorded job's."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.decisions import principal
from support.gateway_world import settings

from control_plane.commands import SubmitJob
from control_plane.hub import ControlPlane
from events.types import JobSpec


def test_the_next_start_removes_job_folders_the_log_does_not_have(tmp_path: Path) -> None:
    async def scenario() -> None:
        host = settings(tmp_path)
        cp = await ControlPlane.open(host)
        jobs = host.shared_dir / "jobs"
        try:
            kept = jobs / "kept0001" / "workdir"
            kept.mkdir(parents=True)
            await cp.execute(
                SubmitJob(
                    job_id="kept0001",
                    spec=JobSpec(run="true"),
                    yaml="run: 'true'",
                    actor=principal("root", "admin"),
                    workdir=str(kept),
                )
            )
        finally:
            await cp.close()
        # Left by a submission the host never recorded (killed in between):
        (jobs / "lost0001" / "workdir").mkdir(parents=True)
        (jobs / "lost0001" / "workdir" / "train.py").write_text("x")
        (jobs / "README").write_text("not a job's")  # not spelled like a job id: kept
        again = await ControlPlane.open(host)
        await again.close()

    asyncio.run(scenario())
    jobs = settings(tmp_path).shared_dir / "jobs"
    assert sorted(p.name for p in jobs.iterdir()) == ["README", "kept0001"]
    assert (jobs / "kept0001" / "workdir").is_dir()
