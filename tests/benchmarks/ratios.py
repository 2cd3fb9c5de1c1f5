"""The figures every benchmark prints, and the ratios they are judged by (issue 19).

Absolute times on shared machines vary 2x from one machine to the next, so each goal is a
ratio of a figure to a floor measured in the same run. A benchmark reports figures with
``report``; at its end ``report_ratios()`` prints every ratio its own figures allow.
``run.py`` reads all lines, computes the ratios that span two scripts (the agent link
against the store's append rate, ours against Slurm), and prints the final table.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

RECORDED: dict[str, float] = {}


def report(name: str, value: float) -> None:
    """Print one ``name value`` line and keep the figure for ``report_ratios``."""
    RECORDED[name] = float(value)
    print(f"{name} {value:.6g}", flush=True)


@dataclass(frozen=True)
class Ratio:
    """One goal: ``value(figures)`` compared with ``goal`` by ``op`` (``<=``, ``<``, ``>=``)."""

    name: str
    needs: tuple[str, ...]
    value: Callable[[Mapping[str, float]], float]
    op: str
    goal: float
    formula: str
    full_only: bool = False
    optional: str = ""  # why it may be absent (a peer not installed here)

    def met(self, value: float) -> bool:
        """Whether ``value`` meets the goal."""
        compare = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}[self.op]
        return bool(compare(value, self.goal))


def _r(
    name: str,
    formula: str,
    needs: tuple[str, ...],
    value: Callable[[Mapping[str, float]], float],
    op: str,
    goal: float,
    **kw: object,
) -> Ratio:
    return Ratio(name, needs, value, op, goal, formula, **kw)  # type: ignore[arg-type]


RATIOS: tuple[Ratio, ...] = (
    _r(
        "append_batch1000_ratio",
        "append_batch1000_events_per_s / floor_arrow1000_events_per_s",
        ("append_batch1000_events_per_s", "floor_arrow1000_events_per_s"),
        lambda f: f["append_batch1000_events_per_s"] / f["floor_arrow1000_events_per_s"],
        ">=",
        0.7,
    ),
    _r(
        "append_single_16_concurrent_ratio",
        "append_single_16_concurrent_events_per_s / (1000 / floor_commit_ms)",
        ("append_single_16_concurrent_events_per_s", "floor_commit_ms"),
        lambda f: f["append_single_16_concurrent_events_per_s"] / (1000 / f["floor_commit_ms"]),
        ">=",
        8,
    ),
    _r(
        "rebuild_1m_vs_100k_ratio",
        "rebuild_1m_events_s / rebuild_100k_events_s",
        ("rebuild_1m_events_s", "rebuild_100k_events_s"),
        lambda f: f["rebuild_1m_events_s"] / f["rebuild_100k_events_s"],
        "<=",
        1.5,
    ),
    _r(
        "rebuild_10m_vs_1m_ratio",
        "rebuild_10m_events_s / rebuild_1m_events_s",
        ("rebuild_10m_events_s", "rebuild_1m_events_s"),
        lambda f: f["rebuild_10m_events_s"] / f["rebuild_1m_events_s"],
        "<=",
        1.5,
        full_only=True,
    ),
    _r(
        "latency_process_task_ratio",
        "latency_process_task_p50_ms / (floor_commit_ms + floor_spawn_true_ms + floor_ws_rtt_ms)",
        (
            "latency_process_task_p50_ms",
            "floor_commit_ms",
            "floor_spawn_true_ms",
            "floor_ws_rtt_ms",
        ),
        lambda f: (
            f["latency_process_task_p50_ms"]
            / (f["floor_commit_ms"] + f["floor_spawn_true_ms"] + f["floor_ws_rtt_ms"])
        ),
        "<=",
        4,
    ),
    _r(
        "latency_vs_slurm_ratio",
        "latency_process_task_p50_ms / slurm_srun_true_ms",
        ("latency_process_task_p50_ms", "slurm_srun_true_ms"),
        lambda f: f["latency_process_task_p50_ms"] / f["slurm_srun_true_ms"],
        "<=",
        1,
        optional="needs a local Slurm (docs/performance.md says how)",
    ),
    _r(
        "throughput_200_process_tasks_ratio",
        "throughput_200_process_tasks_s / floor_spawn_200_true_s",
        ("throughput_200_process_tasks_s", "floor_spawn_200_true_s"),
        lambda f: f["throughput_200_process_tasks_s"] / f["floor_spawn_200_true_s"],
        "<=",
        2,
    ),
    _r(
        "throughput_1000_tasks_4_agents_ratio",
        "throughput_1000_tasks_4_agents_s / (5 * floor_spawn_200_true_s)",
        ("throughput_1000_tasks_4_agents_s", "floor_spawn_200_true_s"),
        lambda f: f["throughput_1000_tasks_4_agents_s"] / (5 * f["floor_spawn_200_true_s"]),
        "<=",
        2,
    ),
    _r(
        "throughput_vs_slurm_ratio",
        "throughput_200_process_tasks_s / slurm_200_jobs_s",
        ("throughput_200_process_tasks_s", "slurm_200_jobs_s"),
        lambda f: f["throughput_200_process_tasks_s"] / f["slurm_200_jobs_s"],
        "<=",
        0.05,
        optional="needs a local Slurm (docs/performance.md says how)",
    ),
    _r(
        "agent_link_ratio",
        "agent_link_events_per_s / append_batch1000_events_per_s",
        ("agent_link_events_per_s", "append_batch1000_events_per_s"),
        lambda f: f["agent_link_events_per_s"] / f["append_batch1000_events_per_s"],
        ">=",
        0.8,
    ),
    _r(
        "audit_verify_1m_ratio",
        "audit_verify_1m_s / floor_sha256_chain_1m_s",
        ("audit_verify_1m_s", "floor_sha256_chain_1m_s"),
        lambda f: f["audit_verify_1m_s"] / f["floor_sha256_chain_1m_s"],
        "<=",
        2,
    ),
    _r(
        "state_at_1m_vs_100k_ratio",
        "state_at_time_1m_s / state_at_time_100k_s",
        ("state_at_time_1m_s", "state_at_time_100k_s"),
        lambda f: f["state_at_time_1m_s"] / f["state_at_time_100k_s"],
        "<=",
        1.5,
    ),
    _r(
        "latency_docker_ratio",
        "latency_docker_task_p50_ms / bare_docker_run_p50_ms",
        ("latency_docker_task_p50_ms", "bare_docker_run_p50_ms"),
        lambda f: f["latency_docker_task_p50_ms"] / f["bare_docker_run_p50_ms"],
        "<=",
        1.15,
        optional="needs a Docker engine",
    ),
    _r(
        "throughput_docker_ratio",
        "throughput_100_docker_tasks_s / bare_docker_100_parallel_s",
        ("throughput_100_docker_tasks_s", "bare_docker_100_parallel_s"),
        lambda f: f["throughput_100_docker_tasks_s"] / f["bare_docker_100_parallel_s"],
        "<=",
        1.2,
        optional="needs a Docker engine",
    ),
    _r(
        "host_cpu_percent_20_agents",
        "control-plane CPU, 20 agents at 1 Hz, 1000 tasks running (% of one core)",
        ("host_cpu_percent_20_agents",),
        lambda f: f["host_cpu_percent_20_agents"],
        "<",
        10,
    ),
)


def computable(figures: Mapping[str, float]) -> list[tuple[Ratio, float]]:
    """The ratios ``figures`` allow, each with its value (a zero floor gives none)."""
    out = []
    for ratio in RATIOS:
        if all(n in figures for n in ratio.needs):
            try:
                value = ratio.value(figures)
            except ZeroDivisionError:
                continue
            if math.isfinite(value):
                out.append((ratio, value))
    return out


def report_ratios() -> None:
    """Print each ratio this script's own figures allow (once, beside the figures)."""
    for ratio, value in computable(RECORDED):
        if ratio.name not in RECORDED:
            report(ratio.name, value)
