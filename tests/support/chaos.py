"""The chaos harness: load a real cluster, hurt it, then check what must hold whatever the fault.

A run is a ``Submitter`` (a client thread that submits ledger tasks one POST at a time and
keeps the ids the host acknowledged with 201) against a ``Target`` (a host and runners as
separate processes: ``support.cluster.Cluster``, or ``support.up.UpCluster`` for
``hakuriver up``). Every task appends its own id to a ``Ledger`` file as its first act, so
the file says who ran and how often, whatever the cluster believes.

After the fault, ``check_invariants`` checks, with the host up:

1. every acknowledged submission reaches a final state (within a deadline);
2. no task ran twice (the ledger's lines equal its distinct ids), every task that
   completed has its one line, and the ledger names only tasks the log knows;
3. the state rebuilt from the log equals the live state, ended tasks included
   (``GET /api/state?tasks=all&at=S`` against ``GET /api/state?tasks=all`` at seq S);
4. the audit passes (``GET /api/audit``, what ``hakuriver audit verify`` asks).

``check_log_offline``, once the host is stopped, folds the whole log file from nothing
(no snapshot) and compares it with the last live state, and runs the real
``hakuriver audit verify --db FILE`` command on it (in-process).
"""

from __future__ import annotations

import collections
import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec

from projections.tasks import ENDED_STATES
from support.waiting import wait_until


class Target(Protocol):
    """What the checks need of a cluster under test."""

    url: str
    http: httpx.Client

    @property
    def db_file(self) -> Path: ...


# -- the ledger ----------------------------------------------------------------------------


class Ledger:
    """A file each task appends its id to, first thing: the ground truth of who ran."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def body(self, *, hold_s: float = 0.0, **fields: Any) -> dict[str, Any]:
        """A submit request for one ledger task (a plain process, no core reserved).

        ``hold_s``: how long the task stays running after it wrote its line, so that a
        fault finds tasks running, not only queued or done.
        """
        script = f'echo "$HAKURIVER_TASK_ID" >> {self.path}'
        if hold_s > 0:
            script += f"; sleep {hold_s}"
        return {
            "command": "sh",
            "args": ["-c", script],
            "container": "NULL",
            "cores": 0,
            **fields,
        }

    def wrote(self, task: dict[str, Any]) -> bool:
        """Whether a task (its API document) is one of this ledger's."""
        return any(str(self.path) in arg for arg in task.get("args") or [])

    def runs(self) -> collections.Counter[str]:
        """How many times each task id ran."""
        return collections.Counter(self.path.read_text().split())


# -- the load ------------------------------------------------------------------------------


@dataclass
class SubmitStats:
    """What a submitter saw: acknowledged ids, refusals by status, unanswered attempts."""

    acked: list[str] = field(default_factory=list)
    refused: collections.Counter[int] = field(default_factory=collections.Counter)
    unanswered: int = 0
    refusals: list[str] = field(default_factory=list)  # the first few bodies, for reports


class Submitter(threading.Thread):
    """Submits ``total`` ledger tasks one POST at a time, as a client would.

    A 201 acknowledges the task; anything else (a refusal, a reset, a timeout) leaves it
    unacknowledged: the submitter then waits for the host to answer its health check
    again (at most ``outage_s``) and goes on with the next task. An unanswered submission
    may still have been recorded: it need not end, but it must not run twice either.
    ``pace_s`` spreads the submissions out (at most one per ``pace_s``), so that a fault
    lasting seconds still meets new work.
    """

    def __init__(
        self,
        url: str,
        token: Callable[[], str | None],
        ledger: Ledger,
        total: int,
        *,
        hold_s: float = 0.0,
        outage_s: float = 60.0,
        fields: dict[str, Any] | None = None,
        timeout_s: float = 5.0,
        pace_s: float = 0.0,
    ) -> None:
        super().__init__(name="chaos-submitter", daemon=True)
        self.url = url
        self.token = token
        self.ledger = ledger
        self.total = total
        self.hold_s = hold_s
        self.outage_s = outage_s
        self.fields = fields or {}
        self.timeout_s = timeout_s
        self.pace_s = pace_s
        self.stats = SubmitStats()
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()

    @property
    def acked(self) -> list[str]:
        with self._lock:
            return list(self.stats.acked)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=self.timeout_s) as http:
                for _ in range(self.total):
                    if self._halt.is_set():
                        return
                    self._submit_one(http)
                    if self.pace_s:
                        self._halt.wait(self.pace_s)  # a rate, so that faults meet new work
        except BaseException as exc:  # reported by finish()
            self.failure = exc

    def _submit_one(self, http: httpx.Client) -> None:
        token = self.token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = self.ledger.body(hold_s=self.hold_s, **self.fields)
        try:
            answer = http.post("/api/tasks", json=body, headers=headers)
        except httpx.HTTPError:
            with self._lock:
                self.stats.unanswered += 1
            self._wait_for_host(http)
            return
        if answer.status_code == 201:
            with self._lock:
                self.stats.acked.extend(answer.json()["task_ids"])
            return
        with self._lock:
            self.stats.refused[answer.status_code] += 1
            if len(self.stats.refusals) < 5:
                self.stats.refusals.append(f"{answer.status_code} {answer.text[:300]}")
        if answer.status_code >= 500:
            self._wait_for_host(http)

    def _wait_for_host(self, http: httpx.Client) -> None:
        """Until the host answers again (a crashed one is being restarted by the test)."""
        deadline = time.monotonic() + self.outage_s
        while not self._halt.is_set() and time.monotonic() < deadline:
            try:
                if http.get("/api/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            self._halt.wait(0.05)

    def wait_acked(self, n: int, timeout: float) -> None:
        """Until ``n`` submissions were acknowledged."""

        def enough() -> bool:
            if self.failure is not None:
                raise AssertionError(f"the submitter failed: {self.failure!r}")
            return len(self.acked) >= n

        wait_until(enough, timeout=timeout, interval=0.005)

    def finish(self, timeout: float) -> SubmitStats:
        """Wait for the last submission; what was acknowledged and refused."""
        self.join(timeout)
        assert not self.is_alive(), f"the submitter did not finish within {timeout}s"
        assert self.failure is None, f"the submitter failed: {self.failure!r}"
        return self.stats


def hold_fault(seconds: float) -> None:
    """Let a fault last ``seconds``: the one wait on time itself in the suite, because how
    long the fault lasts is what the test is about, not a synchronisation."""
    deadline = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= deadline, timeout=seconds + 1, interval=0.02)


def wait_running_on(cluster: Any, node: str) -> None:
    """Until ``node`` (of a ``support.cluster.Cluster``) has a task running, so that the
    fault finds work in flight."""

    def busy() -> bool:
        found = cluster.node(node)
        return bool(found and found["online"] and found["task_ids"])

    cluster.wait(busy, 30, f"a task running on {node}")


def process_logs(root: Path, pattern: str = "*.log") -> str:
    """The tail of every process log under ``root``, for failure messages."""
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(root.glob(pattern))
    )


# -- the invariants ------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the checks found, kept for the offline comparison and for reports."""

    tasks: dict[str, dict[str, Any]]
    live_state: dict[str, Any]
    runs: collections.Counter[str]

    def summary(self) -> str:
        states = collections.Counter(t["state"] for t in self.tasks.values())
        lines = sum(self.runs.values())
        return f"{len(self.tasks)} tasks {dict(states)}; ledger {lines} lines, {len(self.runs)} ids"


def all_tasks(http: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every task the host knows, by id."""
    answer = http.get("/api/tasks", params={"all_users": 1, "limit": 1_000_000})
    assert answer.status_code == 200, answer.text
    return {t["task_id"]: t for t in answer.json()["tasks"]}


def settle(
    http: httpx.Client, acked: Iterable[str], *, timeout: float, describe: Callable[[], str]
) -> dict[str, dict[str, Any]]:
    """Wait until every acknowledged task has ended; every task the host knows."""
    wanted = set(acked)
    found: dict[str, dict[str, Any]] = {}

    def ended() -> bool:
        try:
            found.clear()
            found.update(all_tasks(http))
        except httpx.HTTPError:
            return False
        return all(found.get(t, {}).get("state") in ENDED_STATES for t in wanted)

    try:
        wait_until(ended, timeout=timeout, interval=0.1)
    except AssertionError:
        missing = sorted(t for t in wanted if t not in found)
        stuck = collections.Counter(
            found[t]["state"]
            for t in wanted
            if t in found and found[t]["state"] not in ENDED_STATES
        )
        raise AssertionError(
            f"within {timeout}s, {len(missing)} acknowledged tasks unknown to the host and"
            f" {sum(stuck.values())} not ended {dict(stuck)}\n{describe()}"
        ) from None
    return dict(found)


def check_invariants(
    target: Target,
    acked: Iterable[str],
    ledger: Ledger,
    *,
    timeout: float = 60.0,
    allowed: frozenset[str] = frozenset({"completed"}),
    describe: Callable[[], str] = lambda: "",
) -> Verdict:
    """Invariants 1-4 against a running host (see the module's docstring).

    Every invariant is checked before the test fails, and the failure names each one that
    broke: a run that lost tasks may also have run others twice.
    """
    acked = list(acked)
    problems: list[str] = []
    # 1. Every acknowledged submission reaches a final state, and an expected one.
    try:
        tasks = settle(target.http, acked, timeout=timeout, describe=lambda: "")
    except AssertionError as exc:
        problems.append(str(exc).strip())
        tasks = all_tasks(target.http)
    wrong = {t: tasks[t]["state"] for t in acked if t in tasks and tasks[t]["state"] not in allowed}
    if wrong:
        problems.append(
            f"{len(wrong)} acknowledged tasks ended outside {sorted(allowed)}:"
            f" {_sample({t: (s, tasks[t]['message']) for t, s in wrong.items()})}"
        )
    # 2. No task ran twice; a completed task ran exactly once; the ledger names known tasks.
    runs = ledger.runs()
    twice = {t: n for t, n in runs.items() if n > 1}
    if twice:
        problems.append(
            f"{len(twice)} tasks ran more than once ({sum(runs.values())} lines,"
            f" {len(runs)} distinct ids): {_sample(twice)}"
        )
    never = [
        t
        for t, doc in tasks.items()
        if doc["state"] == "completed" and ledger.wrote(doc) and runs[t] != 1
    ]
    if never:
        problems.append(f"{len(never)} tasks completed with no line in the ledger: {never[:5]}")
    strangers = [t for t in runs if t not in tasks]
    if strangers:
        problems.append(f"tasks ran that the host does not know: {strangers[:5]}")
    # 3. The state rebuilt from the log equals the live state, at the same seq.
    live = _get(target.http, "/api/state", tasks="all")
    rebuilt = _get(target.http, "/api/state", tasks="all", at=live["seq"])
    if rebuilt != live:
        problems.append(_difference("rebuilt from the log", rebuilt, live))
    # 4. The audit (hash chain, legal transitions, no double allocation) passes.
    audit = _get(target.http, "/api/audit")
    if not audit["ok"]:
        found = audit.get("problems", [])
        problems.append(f"audit failed ({len(found)} problems): {found[:5]}")
    assert not problems, "invariants broken:\n- " + "\n- ".join(problems) + f"\n{describe()}"
    return Verdict(tasks=tasks, live_state=live, runs=runs)


def check_log_offline(target: Target, verdict: Verdict) -> None:
    """With the host stopped: the log folded from nothing equals the last live state, and
    ``hakuriver audit verify --db`` passes on the file."""
    from control_plane.history import state_document
    from projections.cluster import ClusterState
    from support.logfile import recorded_events

    live = verdict.live_state
    folded = ClusterState()
    folded.apply_all([r for r in recorded_events(target.db_file) if r.seq <= live["seq"]])
    document = msgspec.json.decode(msgspec.json.encode(state_document(folded, ended=True)))
    assert document == live, _difference("folded offline", document, live)
    # The real command, in this process (a new interpreter would cost seconds per run).
    from cli.hakuriver.main import main as hakuriver

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = hakuriver(["audit", "verify", "--db", str(target.db_file), "--json"])
    assert code == 0, f"hakuriver audit verify --db failed ({code}):\n{out.getvalue()[-3000:]}"


def _get(http: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    answer = http.get(path, params=params, timeout=60)
    assert answer.status_code == 200, f"GET {path} {params}: {answer.status_code} {answer.text}"
    document: dict[str, Any] = answer.json()
    return document


def _sample(found: dict[str, Any], n: int = 5) -> str:
    return ", ".join(f"{k}: {v}" for k, v in list(found.items())[:n])


def _difference(what: str, got: dict[str, Any], live: dict[str, Any]) -> str:
    """The first differing task or node between two state documents."""
    lines = [f"the state {what} differs from the live state at seq {live.get('seq')}:"]
    for key in ("nodes", "tasks"):
        ident = "name" if key == "nodes" else "task_id"
        mine = {d[ident]: d for d in got.get(key, [])}
        theirs = {d[ident]: d for d in live.get(key, [])}
        for name in sorted(set(mine) | set(theirs)):
            a, b = mine.get(name), theirs.get(name)
            if a != b:
                fields = sorted(
                    f for f in set(a or {}) | set(b or {}) if (a or {}).get(f) != (b or {}).get(f)
                )
                a_fields = a and {f: a.get(f) for f in fields}
                b_fields = b and {f: b.get(f) for f in fields}
                lines.append(f"  {key[:-1]} {name}: {what}={a_fields} live={b_fields}")
                if len(lines) > 6:
                    return "\n".join(lines)
    return "\n".join(lines)
