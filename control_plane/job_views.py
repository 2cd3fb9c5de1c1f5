"""What the REST API returns for jobs: the job document and its ranks (docs/api.md).

Like ``views.py``, these Structs are the API's contract: add fields with defaults, never
rename one. Times are RFC 3339 strings in UTC or null (``replay_tools.points.iso``).
"""

from __future__ import annotations

from collections.abc import Mapping

from msgspec import Struct

from projections.jobs import JobView, job_status
from projections.tasks import TaskView
from replay_tools.points import iso


class RankOut(Struct, kw_only=True):
    """One rank of a job: its task, where it runs and how it is doing."""

    rank: int
    task_id: str
    number: int | None
    node: str | None
    address: str | None
    state: str
    exit_code: int | None
    started_at: str | None
    finished_at: str | None
    message: str


class JobResourcesOut(Struct, kw_only=True):
    """The file's ``resources`` as written (SkyPilot's names)."""

    cpus: str | None
    memory: str | None
    accelerators: str | None
    image_id: str | None


class JobOut(Struct, kw_only=True):
    """A job: its file's main fields, what each rank asks for, the aggregated status."""

    job_id: str
    name: str
    owner: str
    status: str  # pending | running | completed | failed | stopped (projections/jobs.py)
    phase: str  # queued | setup | run | ended
    num_nodes: int
    nodes: list[str]
    submitted_at: str | None
    placed_at: str | None
    run_at: str | None
    finished_at: str | None
    message: str
    failed_rank: int | None
    resources: JobResourcesOut
    ignored: dict[str, str]
    cores: int
    memory_bytes: int | None
    gpu_count: int
    gpu_model: str | None
    container: str | None
    # Queued: why it waits (the scheduler's explanation); placed: the placement's reason.
    why: str
    ranks: list[RankOut]
    stop_requested_by: str | None = None

    @classmethod
    def of(cls, job: JobView, tasks: Mapping[str, TaskView], why: str = "") -> JobOut:
        """The job's document from the fold (``why``: the scheduler's word on a queued job)."""
        spec = job.spec
        ranks = []
        for rank, task_id in enumerate(job.rank_task_ids):
            task = tasks.get(task_id)
            ranks.append(
                RankOut(
                    rank=rank,
                    task_id=task_id,
                    number=task.number if task else None,
                    node=(task.node if task else None)
                    or (job.nodes[rank] if rank < len(job.nodes) else None),
                    address=job.addresses[rank] if rank < len(job.addresses) else None,
                    state=task.state if task else "pending",
                    exit_code=task.exit_code if task else None,
                    started_at=iso(task.started_at_us) if task else None,
                    finished_at=iso(task.finished_at_us) if task else None,
                    message=task.message if task else "",
                )
            )
        return cls(
            job_id=job.job_id,
            name=job.name,
            owner=job.owner,
            status=job_status(job, tasks),
            phase=job.phase,
            num_nodes=job.num_nodes,
            nodes=list(job.nodes),
            submitted_at=iso(job.submitted_at_us or None),
            placed_at=iso(job.placed_at_us),
            run_at=iso(job.run_at_us),
            finished_at=iso(job.finished_at_us),
            message=job.message or job.stop_reason,
            failed_rank=job.failed_rank,
            resources=JobResourcesOut(
                cpus=spec.resources.cpus,
                memory=spec.resources.memory,
                accelerators=spec.resources.accelerators,
                image_id=spec.resources.image_id,
            ),
            ignored=dict(spec.resources.ignored),
            cores=spec.cores,
            memory_bytes=spec.memory_bytes,
            gpu_count=spec.gpu_count,
            gpu_model=spec.gpu_model,
            container=spec.container,
            why=why or job.placement_reason,
            ranks=ranks,
            stop_requested_by=job.stop_requested_by,
        )
