#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests of launch/slurm (make test-slurm):
# Debian's SLURM 22.05 and munge, no systemd, no cgroups (proctrack/linuxproc), the machine's
# cores as the node's CPUs, one partition. Needs root (apt, /etc/slurm, the daemons).
#
#   bash scripts/slurm-local.sh start    # install if needed, write the config, start the daemons
#   bash scripts/slurm-local.sh stop     # stop the daemons (the config and state stay)
#   bash scripts/slurm-local.sh status   # sinfo
#
# State, spool and logs live in $WSSS_SLURM_DIR (default /var/tmp/wsss-slurm).
set -euo pipefail
dir=${WSSS_SLURM_DIR:-/var/tmp/wsss-slurm}
conf=/etc/slurm/slurm.conf
node=$(hostname -s)

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null && return
    echo "slurm-local: installing slurmctld, slurmd, slurm-client and munge (apt)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    mkdir -p "$dir/state" "$dir/spool" /etc/slurm
    # MpiDefault=none: the sbatch scripts ask for PMIx themselves when they use srun.
    cat > "$conf" <<EOF
ClusterName=wsss-local
SlurmctldHost=$node
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=30
NodeName=$node CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munge() {
    pgrep -x munged >/dev/null && return
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        munged --force
    fi
}

wait_for_node() {
    for _ in $(seq 60); do
        # No controller yet is not an error here (set -e would end the script silently).
        state=$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)
        case "$state" in idle|mix|alloc) return ;; esac
        sleep 1
    done
    echo "slurm-local: the node did not come up (sinfo: ${state:-nothing}); logs in $dir" >&2
    exit 1
}

case "${1:-}" in
    start)
        install
        write_config
        start_munge
        pgrep -x slurmctld >/dev/null || (slurmctld -D >"$dir/slurmctld.out" 2>&1 &)
        pgrep -x slurmd >/dev/null || (slurmd -D >"$dir/slurmd.out" 2>&1 &)
        wait_for_node
        # A node that was down in an earlier start comes back.
        scontrol update nodename="$node" state=resume 2>/dev/null || true
        sinfo ;;
    stop)
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        pkill -x slurmd || true
        pkill -x slurmctld || true
        # Gone before returning: a `start` right after must not find them still exiting.
        for _ in $(seq 30); do
            pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
            sleep 1
        done ;;
    status)
        sinfo ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2 ;;
esac
