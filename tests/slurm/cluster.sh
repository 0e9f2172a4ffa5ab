#!/usr/bin/env bash
# A real Slurm cluster on this one host, for the Slurm tests (tests/test_slurm_*.py) and CI.
#
#   tests/slurm/cluster.sh start     # install slurm-wlm + munge if missing, write the config, start, wait for idle
#   tests/slurm/cluster.sh status    # the daemons this script started, and sinfo
#   tests/slurm/cluster.sh stop      # cancel the cluster's jobs, stop exactly the daemons it started (by pid)
#   eval "$(tests/slurm/cluster.sh env)"   # SLURM_CONF for sbatch/squeue/srun in this shell
#
# Everything lives under $RLMT_SLURM_DIR (default /tmp/rlmt-slurm): slurm.conf, the munge key and
# socket, state and spool dirs, logs and the pid files. Nothing under /etc is written or read
# except the packages' defaults (plugstack.conf). The daemons are: one munged (as the munge user,
# its own socket), one slurmctld, and $RLMT_SLURM_NODES slurmd (default 2: two nodes on one host,
# Slurm's "multiple-slurmd" layout, each slurmd with its own node name and port).
#
# Settings: RLMT_SLURM_NODES (2), RLMT_SLURM_CPUS (CPUs per node, 2), RLMT_SLURM_MEM_MB (per node,
# default 60% of this host's memory split over the nodes), RLMT_SLURM_PORT (slurmctld port, 16817;
# slurmd i listens on PORT+1+i).
set -euo pipefail

DIR=${RLMT_SLURM_DIR:-/tmp/rlmt-slurm}
NODES=${RLMT_SLURM_NODES:-2}
CPUS=${RLMT_SLURM_CPUS:-2}
PORT=${RLMT_SLURM_PORT:-16817}
HOST=$(hostname -s)
CONF=$DIR/slurm.conf
# Job steps find the config at the default path: the executor plugin's jobstep strips every SLURM_*
# variable (SLURM_CONF too) before it runs the rule, as srun on a real cluster would not need it.
ETC_CONF=/etc/slurm/slurm.conf
SOCKET=$DIR/munge/munge.socket
export SLURM_CONF=$CONF

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

node_names() {
    local i
    if [[ $NODES -eq 1 ]]; then echo "$HOST"; return; fi
    for ((i = 1; i <= NODES; i++)); do echo "$HOST-n$i"; done
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    for bin in slurmctld slurmd sbatch; do command -v $bin >/dev/null || { missing+=(slurm-wlm); break; }; done
    [[ ${#missing[@]} -eq 0 ]] && return
    [[ $(id -u) -eq 0 ]] || die "slurm-wlm/munge are missing and installing them needs root"
    log "installing ${missing[*]} with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >"$DIR/log/apt.log" 2>&1 || {
        apt-get update >>"$DIR/log/apt.log" 2>&1
        apt-get install -y --no-install-recommends "${missing[@]}" >>"$DIR/log/apt.log" 2>&1
    } || die "apt-get install ${missing[*]} failed; see $DIR/log/apt.log"
}

# pid file name -> the pid, if that process is alive and is the program we started with our config.
alive_pid() {
    local file=$DIR/pids/$1.pid pid
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' </proc/"$pid"/cmdline | grep -q -- "$DIR" || return 1
    echo "$pid"
}

daemons() {
    echo munged
    echo slurmctld
    local n
    for n in $(node_names); do echo "slurmd-$n"; done
}

write_config() {
    local total mem n i=0
    total=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    mem=${RLMT_SLURM_MEM_MB:-$((total * 6 / 10 / NODES))}
    mkdir -p "$DIR"/{state,spool,log,pids,munge}
    {
        cat <<EOF
# Written by tests/slurm/cluster.sh; rewritten on every start.
ClusterName=rlmt
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Every finished job, one line each (JobId, Name, JobState, NodeCnt, ProcCnt ...): the record the tests read.
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
MpiDefault=none
SchedulerType=sched/backfill
# Finished jobs stay visible to squeue for 10 minutes (the executor plugin's status source without sacct).
MinJobAge=600
ReturnToService=2
# The declared CPUs and memory are the scheduler's, not checked against the shared host.
SlurmdParameters=config_overrides
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/pids/slurmctld.daemon.pid
SlurmdPidFile=$DIR/pids/slurmd-%n.daemon.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldTimeout=30
SlurmdTimeout=60
KillWait=10
EOF
        for n in $(node_names); do
            echo "NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT + 1 + i)) CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
            i=$((i + 1))
        done
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
    } >"$CONF"
    for n in $(node_names); do mkdir -p "$DIR/spool/$n"; done
    link_default_config
}

# /etc/slurm/slurm.conf -> our slurm.conf, unless that path belongs to another Slurm.
link_default_config() {
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then return; fi
    [[ -e $ETC_CONF || -L $ETC_CONF ]] && die "$ETC_CONF exists and is not this cluster's; not touching it"
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -s "$CONF" "$ETC_CONF"
}

unlink_default_config() {
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then rm -f "$ETC_CONF"; fi
}

start_munged() {
    alive_pid munged >/dev/null && return
    if [[ ! -s $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chown -R munge:munge "$DIR/munge"
    chmod 0711 "$DIR/munge"   # clients need to reach the socket
    chmod 0400 "$DIR/munge/munge.key"
    setsid setpriv --reuid=munge --regid=munge --init-groups -- munged --foreground \
        --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
        </dev/null >"$DIR/log/munged.out" 2>&1 &
    local pid=$! t
    echo $pid >"$DIR/pids/munged.pid"
    for t in $(seq 50); do
        [[ -S $SOCKET ]] && return
        kill -0 $pid 2>/dev/null || break
        sleep 0.1
    done
    die "munged did not start; see $DIR/munge/munged.log and $DIR/log/munged.out"
}

start_slurmctld() {
    alive_pid slurmctld >/dev/null && return
    # -i: ignore saved state from an earlier run of this cluster (jobs of a stopped cluster are gone)
    setsid slurmctld -D -i -f "$CONF" </dev/null >"$DIR/log/slurmctld.out" 2>&1 &
    local pid=$! t
    echo $pid >"$DIR/pids/slurmctld.pid"
    for t in $(seq 100); do
        scontrol ping 2>/dev/null | grep -q UP && return
        kill -0 $pid 2>/dev/null || break
        sleep 0.2
    done
    die "slurmctld did not come up; see $DIR/log/slurmctld.log"
}

start_slurmd() {
    local n
    for n in $(node_names); do
        alive_pid "slurmd-$n" >/dev/null && continue
        setsid slurmd -D -N "$n" -f "$CONF" </dev/null >"$DIR/log/slurmd-$n.out" 2>&1 &
        echo $! >"$DIR/pids/slurmd-$n.pid"
    done
}

wait_idle() {
    local t states
    for t in $(seq 150); do
        states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)
        if [[ -n $states ]] && ! grep -qv ' idle$\| mixed$\| allocated$' <<<"$states" \
            && [[ $(wc -l <<<"$states") -eq $NODES ]]; then
            return
        fi
        # a node left down by an earlier run of this cluster comes back by hand
        { grep -E ' (down|drained|draining|drain)' <<<"$states" || true; } | while read -r node _; do
            scontrol update NodeName="$node" State=RESUME 2>/dev/null || true
        done
        sleep 0.4
    done
    sinfo -N -l >&2 || true
    die "the nodes did not become idle in 60 s; see $DIR/log/"
}

running() {
    local d
    for d in $(daemons); do alive_pid "$d" >/dev/null || return 1; done
}

start() {
    mkdir -p "$DIR/log"
    install_packages
    if running && scontrol ping 2>/dev/null | grep -q UP; then
        log "already running ($NODES node(s)) under $DIR"
        wait_idle
        return
    fi
    stop_daemons   # whatever is left of an earlier, partly stopped cluster
    write_config
    start_munged
    start_slurmctld
    start_slurmd
    wait_idle
    log "up: $(sinfo -h -N -o '%N:%T' | tr '\n' ' ')(SLURM_CONF=$CONF)"
}

stop_daemons() {
    local d pid pids=() t
    for d in $(daemons); do
        [[ $d == munged ]] && continue
        pid=$(alive_pid "$d") && { kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); }
    done
    for t in $(seq 100); do
        local left=()
        for pid in "${pids[@]}"; do [[ -e /proc/$pid ]] && left+=("$pid"); done
        [[ ${#left[@]} -eq 0 ]] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do [[ -e /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null || true; done
    # munged last: the Slurm daemons authenticate through it while shutting down
    pid=$(alive_pid munged) && { kill -TERM "$pid" 2>/dev/null || true
        for t in $(seq 50); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
        [[ -e /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null || true; }
    rm -f "$DIR"/pids/*.pid
}

stop() {
    [[ -d $DIR/pids ]] || { log "nothing to stop under $DIR"; return; }
    if alive_pid slurmctld >/dev/null; then
        # Jobs run in slurmstepd processes that outlive slurmd: cancel them while the daemons are up.
        local ids t
        ids=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n $ids ]]; then
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
            for t in $(seq 60); do
                [[ -z $(squeue -h -t RUNNING,COMPLETING,PENDING,CONFIGURING -o %i 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_daemons
    unlink_default_config
    log "stopped"
}

status() {
    local d pid rc=0
    for d in $(daemons); do
        if pid=$(alive_pid "$d"); then echo "$d: running (pid $pid)"; else echo "$d: not running"; rc=1; fi
    done
    if [[ $rc -eq 0 ]]; then sinfo -N -o '%N %T %c %m' || rc=1; fi
    return $rc
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
