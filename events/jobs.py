"""How a job's rank runs on its node: the setup/run barrier shared by host and agent.

A rank is an ordinary task whose command is ``rank_command(setup, run)``: a POSIX shell
script that merges stderr into stdout (one log, in order), runs ``setup`` (if any),
then creates ``SETUP_DONE`` in its control folder and waits until ``GO`` appears there,
then runs ``run``. A failed setup ends the rank with the setup's exit code.

The agent gives every rank (``spec.job_id`` set) a control folder of its own, named by
``CONTROL_ENV`` in the rank's environment (in a container, mounted at
``CONTAINER_CONTROL``). It reports ``job.setup_done`` once ``SETUP_DONE`` exists, and
creates ``GO`` when the host sends ``link.JobGo`` (after every rank's setup succeeded:
``job.phase`` ``run``). Both files are only ever tested for existence, never read: a
rank can only hurt its own job by writing there.

``setup`` and ``run`` are run by ``bash`` when the image (or node) has it, else ``sh``,
from the rank's working folder (the job's workdir copy, when it has one).
"""

from __future__ import annotations

CONTROL_ENV = "HAKURIVER_JOB_CONTROL"
SETUP_DONE = "setup.done"
GO = "go"
# Where a container rank sees its control folder and the job's workdir copy.
CONTAINER_CONTROL = "/hakuriver/control"
CONTAINER_WORKDIR = "/hakuriver/workdir"
# How often the waiting rank looks for GO (busybox's sleep takes fractions).
POLL_S = 0.05
# A rank's exit code when it cannot tell it finished its setup (its control folder is not
# writable: a container user the folder does not let in, an SELinux label): it ends, and
# fails its job, rather than wait at the barrier for ever.
CONTROL_FAILED = 125

RANK_SCRIPT = f"""exec 2>&1
setup=$1
run=$2
shell=sh
if command -v bash >/dev/null 2>&1; then shell=bash; fi
ctl="${{{CONTROL_ENV}:?the agent gives every job rank a control folder}}"
if [ -n "$setup" ]; then
  "$shell" -c "$setup"
  code=$?
  if [ "$code" -ne 0 ]; then
    echo "hakuriver: setup failed with exit code $code" >&2
    exit "$code"
  fi
fi
# (a subshell: a failed redirection of ':' would end the script itself, code 2)
( : > "$ctl/{SETUP_DONE}" ) || {{
  echo "hakuriver: cannot write the rank's control folder $ctl" >&2
  exit {CONTROL_FAILED}
}}
while [ ! -e "$ctl/{GO}" ]; do
  # The folder gone (removed by someone, or by an agent that no longer knows the rank):
  # no go can ever come; end rather than hold the job's nodes for ever.
  if [ ! -d "$ctl" ]; then
    echo "hakuriver: the rank's control folder is gone" >&2
    exit {CONTROL_FAILED}
  fi
  sleep {POLL_S} 2>/dev/null || sleep 1
done
exec "$shell" -c "$run"
"""


def rank_command(setup: str | None, run: str) -> tuple[str, tuple[str, ...]]:
    """The command and arguments of a rank's task: the script above, with its setup and
    run as its positional parameters (never parsed as part of the script)."""
    return "/bin/sh", ("-c", RANK_SCRIPT, "hakuriver-job", setup or "", run)


def rank_env(
    *,
    job_id: str,
    rank: int,
    addresses: tuple[str, ...],
    gpus_per_node: int,
    name: str,
) -> dict[str, str]:
    """The variables a rank's placement adds to its environment (``task.placed``'s env):
    seed 002's ``NODE_RANK`` and ``NUM_NODES``, SkyPilot's (its docs' names, for setup
    and for run), and ``HAKURIVER_JOB_ID``. ``addresses`` are every rank's node
    addresses in rank order (the runners' reachable addresses)."""
    import json

    ips = "\n".join(addresses)
    nodes = str(len(addresses))
    return {
        "NODE_RANK": str(rank),
        "NUM_NODES": nodes,
        "HAKURIVER_JOB_ID": job_id,
        "HAKURIVER_JOB_NAME": name,
        "SKYPILOT_SETUP_NODE_RANK": str(rank),
        "SKYPILOT_SETUP_NODE_IPS": ips,
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_NODE_IPS": ips,
        "SKYPILOT_NUM_NODES": nodes,
        "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus_per_node),
        "SKYPILOT_TASK_ID": job_id,
        "SKYPILOT_CLUSTER_INFO": json.dumps(
            {"cluster_name": "hakuriver", "cloud": "hakuriver", "region": None, "zone": None},
            separators=(",", ":"),
        ),
    }
