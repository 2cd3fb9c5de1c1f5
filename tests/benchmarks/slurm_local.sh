#!/bin/sh
# A single-node Slurm on this machine, for the peer figures of bench_peers.py (issue 19).
#
# Run as root on Debian (bookworm: `apt-get install slurm-wlm munge`). Idempotent: it
# rewrites /etc/slurm/slurm.conf only when it differs, creates the munge key only when
# there is none, starts munged, slurmctld and slurmd only when they do not answer, and
# resumes the node if an earlier run left it down. Works without systemd (containers):
# the daemons are started directly. Tear down with: scancel -u root; then kill the pids
# in /run/slurm/*.pid and /run/munge/munged.pid.
#
#   sudo sh tests/benchmarks/slurm_local.sh          # set up (or check) and start
#   CPUS=4 sudo sh tests/benchmarks/slurm_local.sh   # the node's CPUs (default: nproc)
set -eu

if [ "$(id -u)" != 0 ]; then
    echo "slurm_local.sh: run as root" >&2
    exit 2
fi
for bin in munged slurmctld slurmd sinfo srun sbatch scontrol; do
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
        echo "slurm_local.sh: $bin missing: apt-get install slurm-wlm munge" >&2
        exit 2
    fi
done
PATH="$PATH:/usr/sbin"

NODE="$(hostname -s)"
CPUS="${CPUS:-$(nproc)}"
CONF=/etc/slurm/slurm.conf

# --- munge: one key, owned by munge, and a running munged that answers ---------------
install -d -o munge -g munge -m 0700 /etc/munge
install -d -o munge -g munge -m 0711 /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid
    su -s /bin/sh munge -c /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null
fi

# --- slurm.conf: this host as the one node, the controller beside it ------------------
install -d -o slurm -g slurm -m 0755 /var/lib/slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d -m 0755 /var/lib/slurm/slurmd /run/slurm
chown slurm:slurm /run/slurm
NEW="$(mktemp)"
cat >"$NEW" <<EOF
# Written by tests/benchmarks/slurm_local.sh: a single-node Slurm for the peer benchmarks.
ClusterName=hakuriver-bench
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups: proctrack by process tree, no task binding (works in a container too).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
# Tuned as a small lab would (the stock passes start a 200-job array in about 4 minutes):
# batch jobs are scheduled at once and the main pass looks at the whole queue.
SchedulerParameters=batch_sched_delay=0,default_queue_depth=1000,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE CPUs=$CPUS State=UNKNOWN
PartitionName=bench Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
if ! cmp -s "$NEW" "$CONF"; then
    install -m 0644 "$NEW" "$CONF"
    CHANGED=1
else
    CHANGED=0
fi
rm -f "$NEW"

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive /run/slurm/slurmctld.pid && [ "$CHANGED" = 1 ]; then
    scontrol reconfigure
fi
if ! alive /run/slurm/slurmctld.pid; then
    slurmctld
fi
if ! alive /run/slurm/slurmd.pid; then
    slurmd
fi

# --- wait until the controller answers and the node is usable ------------------------
for _ in $(seq 100); do
    scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.2
done
scontrol ping | grep -q UP || { echo "slurm_local.sh: slurmctld does not answer (see /var/log/slurm/slurmctld.log)" >&2; exit 1; }
for _ in $(seq 100); do
    state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1)"
    case "$state" in
        idle*|mixed*|allocated*) break ;;
        down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1)"
case "$state" in
    idle*|mixed*|allocated*) ;;
    *) echo "slurm_local.sh: node $NODE is '$state' (see /var/log/slurm/slurmd.log)" >&2; exit 1 ;;
esac
sinfo
