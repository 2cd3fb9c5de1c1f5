"""The control plane's command boundary: every decision, as a pure function.

An adapter (a route, the agent link, a timer) turns what it received into a command
(``types.py``) and hands it to ``ControlPlane.execute``, which takes the gate, calls
``decide`` on the folded state, records the decision's events in one commit, then sends
its link messages. Nothing in this package does I/O or keeps state between calls, so
each decision is tested on a ``ClusterState`` alone.

Where each decision lives:

=====================  ===========================================  ============
command                decision                                     module
=====================  ===========================================  ============
SubmitTasks            validate, number, place what fits now        submit.py
PlaceQueued            the scheduler's pass over the queue          submit.py
KillTask               kill (queued: at once; unknown: lost)        tasks.py
PauseTask              pause or resume                              tasks.py
NodeHello              registration, reconciliation on reconnect    nodes.py
ReportFacts            an agent's reports; kill of a late start     nodes.py
ForgetNode             remove a node gone for good                  nodes.py
CheckLiveness          offline, unknown, given up                   nodes.py
RecordFacts            the host's own facts (environments, shells)  here
OpenSshSession         a user into a VPS (SSH gateway, vps shell)   vps.py
CloseSessionsLeftOpen  sessions a killed host never closed          vps.py
SubmitJob              a job file's job and its ranks, queued       jobs.py
StopJobs               stop jobs (named, all of mine, everyone's)   jobs.py
AdvanceJobs            run phase, failure of a rank, job's end      jobs.py
CreateVolume           a named folder of the shared storage         jobs.py
CreateUser ...         users, tokens, enrolment, SSH keys           identity.py
=====================  ===========================================  ============

Every command a user's request makes carries the authenticated ``actor``
(``control_plane.access.Principal``): the decisions check what it may do on the state
(its own tasks, tokens, keys), and ``ControlPlane.execute`` stamps it on every event.
"""

from __future__ import annotations

from control_plane.commands.identity import (
    decide_add_key,
    decide_change_role,
    decide_create_user,
    decide_disable_user,
    decide_enroll,
    decide_issue_token,
    decide_remove_key,
    decide_revoke_node,
    decide_revoke_token,
)
from control_plane.commands.jobs import (
    decide_advance_jobs,
    decide_create_volume,
    decide_stop_jobs,
    decide_submit_job,
)
from control_plane.commands.nodes import (
    NodeNotOnline,
    decide_forget,
    decide_hello,
    decide_liveness,
    decide_report,
)
from control_plane.commands.submit import decide_placement, decide_submission
from control_plane.commands.tasks import decide_kill, decide_pause
from control_plane.commands.types import (
    FACTS,
    AddKey,
    AdvanceJobs,
    ChangeRole,
    CheckLiveness,
    CloseSessionsLeftOpen,
    Command,
    Context,
    CreateUser,
    CreateVolume,
    Decision,
    DisableUser,
    EnrollNode,
    ForgetNode,
    IssueToken,
    KillTask,
    NodeHello,
    OpenSshSession,
    PauseTask,
    PlaceQueued,
    RecordFacts,
    RemoveKey,
    ReportFacts,
    RevokeNode,
    RevokeToken,
    Send,
    StopJobs,
    SubmitJob,
    SubmitTasks,
)
from control_plane.commands.vps import decide_close_left_open, decide_ssh_session
from projections.cluster import ClusterState

__all__ = [
    "FACTS",
    "AddKey",
    "AdvanceJobs",
    "ChangeRole",
    "CheckLiveness",
    "CloseSessionsLeftOpen",
    "Command",
    "Context",
    "CreateUser",
    "CreateVolume",
    "Decision",
    "DisableUser",
    "EnrollNode",
    "ForgetNode",
    "IssueToken",
    "KillTask",
    "NodeHello",
    "NodeNotOnline",
    "OpenSshSession",
    "PauseTask",
    "PlaceQueued",
    "RecordFacts",
    "RemoveKey",
    "ReportFacts",
    "RevokeNode",
    "RevokeToken",
    "Send",
    "StopJobs",
    "SubmitJob",
    "SubmitTasks",
    "decide",
]


def decide(state: ClusterState, command: Command, ctx: Context) -> Decision:
    """The decision for ``command`` on ``state`` (raises a ``DomainError`` to refuse it)."""
    match command:
        case SubmitTasks():
            return decide_submission(state, command, ctx)
        case PlaceQueued():
            return decide_placement(state, command, ctx)
        case KillTask():
            return decide_kill(state, command, ctx)
        case PauseTask():
            return decide_pause(state, command, ctx)
        case NodeHello():
            return decide_hello(state, command, ctx)
        case ReportFacts():
            return decide_report(state, command, ctx)
        case CheckLiveness():
            return decide_liveness(state, command, ctx)
        case ForgetNode():
            return decide_forget(state, command, ctx)
        case RecordFacts():
            return Decision(events=list(command.events))
        case OpenSshSession():
            return decide_ssh_session(state, command, ctx)
        case CloseSessionsLeftOpen():
            return decide_close_left_open(state, command, ctx)
        case CreateUser():
            return decide_create_user(state, command, ctx)
        case ChangeRole():
            return decide_change_role(state, command, ctx)
        case DisableUser():
            return decide_disable_user(state, command, ctx)
        case IssueToken():
            return decide_issue_token(state, command, ctx)
        case RevokeToken():
            return decide_revoke_token(state, command, ctx)
        case EnrollNode():
            return decide_enroll(state, command, ctx)
        case RevokeNode():
            return decide_revoke_node(state, command, ctx)
        case AddKey():
            return decide_add_key(state, command, ctx)
        case RemoveKey():
            return decide_remove_key(state, command, ctx)
        case SubmitJob():
            return decide_submit_job(state, command, ctx)
        case StopJobs():
            return decide_stop_jobs(state, command, ctx)
        case AdvanceJobs():
            return decide_advance_jobs(state, command, ctx)
        case CreateVolume():
            return decide_create_volume(state, command, ctx)
