#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for `make test-cluster` and CI.
#
#   deploy/local-slurm.sh start    install the Debian packages if missing (apt-get), start munged,
#                                  [mariadbd, slurmdbd,] slurmctld and slurmd, wait until
#                                  `srun hostname` answers
#   deploy/local-slurm.sh stop     cancel every job, stop every daemon, leave nothing running
#   deploy/local-slurm.sh status   say which daemon runs (exit 0 only when all of them do)
#
# start and stop need root: slurmd runs jobs as root (SlurmUser=root), munged runs as user munge.
# Both are idempotent. After start, sinfo/sbatch/srun/scancel/sacct work without any
# environment: /etc/slurm/slurm.conf is made a link to the generated configuration (only when
# that path is free or already such a link; otherwise export SLURM_CONF=<state>/slurm.conf).
#
# Environment (all optional):
#   MNIST_EXP_SLURM_STATE          state folder: configuration, logs, pid files, spool, saved
#                                  controller state, accounting database (default
#                                  /var/lib/mnist-exp-slurm: outside the repository, and not
#                                  /tmp, where root daemons should not write at predictable paths)
#   MNIST_EXP_SLURMCTLD_PORT       slurmctld port (default 6817)
#   MNIST_EXP_SLURMD_PORT          slurmd port (default 6818)
#   MNIST_EXP_SLURMDBD_PORT        slurmdbd port (default 6819)
#   MNIST_EXP_SLURM_PARTITION      name of the single, default partition (default local)
#   MNIST_EXP_SLURM_ACCOUNTING     1 (default): job accounting through slurmdbd + MariaDB, so that
#                                  `sacct` answers; 0: none (lighter, but see below)
#   MNIST_EXP_SLURM_REQUEUE_DELAY  seconds a requeued job waits before it may run again
#                                  (AuthInfo=cred_expire; SLURM's default is 120, here 10)
#   MNIST_EXP_SLURM_TIMEOUT        seconds to wait for each daemon to answer (default 60)
#
# Why accounting by default: submitit learns that a job ended without writing its result (killed
# by scancel, by its time limit, by the OOM killer...) only from `sacct`. Without slurmdbd,
# sacct fails ("Slurm accounting storage is disabled"), submitit ignores the error and
# job.result() waits forever. The MariaDB server listens on its Unix socket only (no TCP) and
# slurmdbd logs in as the database's root user through socket authentication: no password.
#
# Cluster shape: one node named $(hostname -s) with the CPUs slurmd detects, SelectType=
# select/cons_tres with CR_CPU, so a 2-CPU machine runs two --cpus-per-task=1 jobs side by side.
# Memory is not a consumable resource (RealMemory only rejects jobs asking for more than the
# machine has).
set -euo pipefail

PROG=local-slurm.sh
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

STATE=${MNIST_EXP_SLURM_STATE:-/var/lib/mnist-exp-slurm}
CTLD_PORT=${MNIST_EXP_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${MNIST_EXP_SLURMD_PORT:-6818}
DBD_PORT=${MNIST_EXP_SLURMDBD_PORT:-6819}
PARTITION=${MNIST_EXP_SLURM_PARTITION:-local}
ACCOUNTING=${MNIST_EXP_SLURM_ACCOUNTING:-1}
REQUEUE_DELAY=${MNIST_EXP_SLURM_REQUEUE_DELAY:-10}
TIMEOUT=${MNIST_EXP_SLURM_TIMEOUT:-60}

CLUSTER=mnistexp
CONF=$STATE/slurm.conf
DBD_CONF=$STATE/slurmdbd.conf # slurmdbd looks for it next to $SLURM_CONF
MUNGE_DIR=$STATE/munge        # munged insists on a folder that only user munge can write
MUNGE_KEY=/etc/munge/munge.key # the packaged location, so plain munge/unmunge work too
MARIADB_DIR=$STATE/mariadb     # owned by user mysql: data, log, pid file
MARIADB_CNF=$STATE/mariadb.cnf
# slurmdbd has no setting for the socket: it connects to "localhost", which the MariaDB client
# library turns into its compiled-in default socket.
MARIADB_SOCKET=/run/mysqld/mysqld.sock
ETC_CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)

# name -> pid file and log of each daemon
declare -A PIDFILE=(
    [munged]=$MUNGE_DIR/munged.pid
    [mariadbd]=$MARIADB_DIR/mariadbd.pid
    [slurmdbd]=$STATE/run/slurmdbd.pid
    [slurmctld]=$STATE/run/slurmctld.pid
    [slurmd]=$STATE/run/slurmd.pid
)
declare -A LOGFILE=(
    [munged]=$MUNGE_DIR/munged.log
    [mariadbd]=$MARIADB_DIR/mariadb.log
    [slurmdbd]=$STATE/log/slurmdbd.log
    [slurmctld]=$STATE/log/slurmctld.log
    [slurmd]=$STATE/log/slurmd.log
)

# Every daemon started here inherits this; clients run from this script read it too.
export SLURM_CONF=$CONF

daemons() {
    if [[ $ACCOUNTING == 1 ]]; then
        echo munged mariadbd slurmdbd slurmctld slurmd
    else
        echo munged slurmctld slurmd
    fi
}

# daemon_pid NAME: the pid of our instance of a daemon, or nothing. From its pid file, else the
# process of that name whose environment holds our SLURM_CONF (every daemon is started with it),
# so that a daemon of some other installation on the machine is never taken for ours.
daemon_pid() {
    local pid
    if pid_alive "${PIDFILE[$1]}"; then
        cat "${PIDFILE[$1]}"
        return 0
    fi
    for pid in $(pgrep -x "$1" || true); do
        # A non-root status cannot read root's environments: it takes the name for enough.
        if [[ ! -r /proc/$pid/environ ]] ||
            { tr '\0' '\n' <"/proc/$pid/environ" | grep -qxF "SLURM_CONF=$CONF"; } 2>/dev/null; then
            echo "$pid"
            return 0
        fi
    done
}

# wait_for DESCRIPTION LOG-NAMES COMMAND...: poll the command until it succeeds, at most TIMEOUT
# seconds; on timeout show the end of the named daemons' logs and give up.
wait_for() {
    local what=$1 names=$2 deadline=$((SECONDS + TIMEOUT)) name
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${TIMEOUT}s waiting for ${what}"
            for name in $names; do show_log "${LOGFILE[$name]}"; done
            die "the SLURM cluster did not come up"
        fi
        sleep 0.5
    done
}

# start_failed NAME: a daemon exited with an error instead of forking into the background.
start_failed() {
    show_log "${LOGFILE[$1]}"
    die "$1 did not start"
}

write_conf() {
    local hw mem_mb accounting
    # The topology slurmd detects (CPUs, sockets, cores, threads), so that it does not complain
    # about a configuration that differs from the hardware; RealMemory at 95% of what it sees:
    # a RealMemory above the detected one would drain the node.
    hw=$(slurmd -C 2>/dev/null | head -n 1 |
        grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' | tr '\n' ' ') || true
    [[ $hw == *CPUs=* ]] || hw="CPUs=$(nproc) "
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
    if [[ $ACCOUNTING == 1 ]]; then
        accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=${DBD_PORT}"
    else
        accounting="# No slurmdbd: sacct fails (\"Slurm accounting storage is disabled\")
AccountingStorageType=accounting_storage/none"
    fi
    mkdir -p "$STATE"/{log,run,spool,ctld}
    cat >"$CONF.tmp" <<EOF
# Generated by deploy/local-slurm.sh: a one-node test cluster. Edits are overwritten at start.
ClusterName=${CLUSTER}
SlurmctldHost=${NODE}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=${REQUEUE_DELAY}
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/spool
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=${PIDFILE[slurmd]}
SlurmctldLogFile=${LOGFILE[slurmctld]}
SlurmdLogFile=${LOGFILE[slurmd]}
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true

# No cgroups (none needed for tests). proctrack/pgid rather than linuxproc: linuxproc finds a
# job's processes through their parent chain and loses those whose parent died first (e.g. the
# children of a batch shell killed by \`scancel --batch\`), which then outlive the job;
# a process group survives that.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
${accounting}
JobCompType=jobcomp/none

SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Pending jobs (e.g. requeued ones whose delay is over) are looked at every 2 s, not every 60 s.
SchedulerParameters=sched_interval=2,bf_interval=2

# Reject at submission a job this node can never run (e.g. --cpus-per-task above its CPUs)
# instead of leaving it pending forever (Reason=PartitionConfig) with its submitter waiting.
EnforcePartLimits=ALL

# Preemption tests: jobs may be requeued (scontrol requeue, submitit's checkpoint/requeue).
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled or reaches its time limit.
KillWait=5
# Finished jobs stay visible to squeue/scontrol for this long.
MinJobAge=300
# A node that went down (e.g. slurmd restarted) comes back as soon as it registers.
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
OverTimeLimit=0

NodeName=${NODE} NodeAddr=127.0.0.1 NodeHostname=${NODE} ${hw}RealMemory=${mem_mb} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
    mv -f "$CONF.tmp" "$CONF"

    # Clients (sinfo, sbatch, srun, sacct, submitit) read /etc/slurm/slurm.conf unless
    # SLURM_CONF is set.
    mkdir -p "$(dirname "$ETC_CONF")"
    if [[ ! -e $ETC_CONF && ! -L $ETC_CONF ]] || [[ $(readlink "$ETC_CONF" || true) == "$CONF" ]]; then
        ln -sfn "$CONF" "$ETC_CONF"
    elif [[ $(readlink -f "$ETC_CONF") != "$(readlink -f "$CONF")" ]]; then
        log "warning: $ETC_CONF exists and is not ours: clients need export SLURM_CONF=$CONF"
    fi
}

start_munged() {
    [[ -z $(daemon_pid munged) ]] || return 0
    install -d -o munge -g munge -m 0700 "$MUNGE_DIR"
    install -d -o munge -g munge -m 0755 /run/munge # the client socket lives there
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key $MUNGE_KEY"
        install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
        mungekey --create --keyfile="$MUNGE_KEY"
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    # munged forks into the background once its socket is ready.
    runuser -u munge -- /usr/sbin/munged --key-file="$MUNGE_KEY" \
        --pid-file="${PIDFILE[munged]}" --log-file="${LOGFILE[munged]}" || start_failed munged
    munge -n | unmunge >/dev/null || {
        show_log "${LOGFILE[munged]}"
        die "munged runs but munge | unmunge fails"
    }
}

start_mariadb() {
    [[ -z $(daemon_pid mariadbd) ]] || return 0
    install -d -o mysql -g mysql -m 0750 "$MARIADB_DIR"
    install -d -o mysql -g mysql -m 0755 "$(dirname "$MARIADB_SOCKET")"
    cat >"$MARIADB_CNF" <<EOF
# Generated by deploy/local-slurm.sh: the accounting database of the test cluster.
[mariadbd]
user=mysql
datadir=${MARIADB_DIR}/data
socket=${MARIADB_SOCKET}
pid-file=${PIDFILE[mariadbd]}
log-error=${LOGFILE[mariadbd]}
skip-networking
# A few jobs' records: keep the memory small.
innodb_buffer_pool_size=32M
# slurmdbd's tables need this (recommended by SLURM's accounting documentation).
innodb_lock_wait_timeout=900
EOF
    if [[ ! -d $MARIADB_DIR/data/mysql ]]; then
        log "creating the accounting database in $MARIADB_DIR/data"
        # The database's root user logs in through the Unix socket as the system's root: no
        # password anywhere.
        mariadb-install-db --defaults-file="$MARIADB_CNF" --auth-root-authentication-method=socket \
            --skip-test-db >"$MARIADB_DIR/install.log" 2>&1 || {
            show_log "$MARIADB_DIR/install.log"
            die "mariadb-install-db failed"
        }
    fi
    # mariadbd stays in the foreground: detach it into its own session.
    setsid mariadbd --defaults-file="$MARIADB_CNF" </dev/null >/dev/null 2>&1 &
    wait_for "mariadbd (mariadb-admin ping)" mariadbd \
        mariadb-admin --socket="$MARIADB_SOCKET" ping
}

start_slurmdbd() {
    [[ -z $(daemon_pid slurmdbd) ]] || return 0
    # slurmdbd refuses a configuration readable by others (it may hold a database password).
    install -m 0600 /dev/null "$DBD_CONF"
    cat >"$DBD_CONF" <<EOF
# Generated by deploy/local-slurm.sh.
AuthType=auth/munge
DbdHost=${NODE}
DbdAddr=127.0.0.1
DbdPort=${DBD_PORT}
SlurmUser=root
LogFile=${LOGFILE[slurmdbd]}
PidFile=${PIDFILE[slurmdbd]}
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=${CLUSTER}_acct_db
EOF
    slurmdbd || start_failed slurmdbd
    wait_for "slurmdbd (sacctmgr list cluster)" slurmdbd sacctmgr -n list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1; }
node_idle() { [[ $(node_state) == idle ]]; }

all_running() {
    local name
    for name in $(daemons); do
        [[ -n $(daemon_pid "$name") ]] || return 1
    done
    scontrol ping >/dev/null 2>&1
}

cmd_start() {
    is_root || die "start needs root (slurmd runs jobs as root, munged runs as user munge)"
    local packages=(slurm-wlm munge)
    [[ $ACCOUNTING != 1 ]] || packages+=(slurmdbd mariadb-server)
    ensure_packages "${packages[@]}"
    if all_running; then
        log "already running"
        print_usage_hint
        return 0
    fi
    # A partial cluster (a daemon died): start again from a clean slate.
    local name
    for name in $(daemons); do
        if [[ -n $(daemon_pid "$name") ]]; then
            cmd_stop
            break
        fi
    done

    start_munged
    write_conf
    if [[ $ACCOUNTING == 1 ]]; then
        start_mariadb
        start_slurmdbd
    fi
    # -i: start even if the saved state (job ids, node state) of an earlier run is unreadable.
    slurmctld -i || start_failed slurmctld
    wait_for "slurmctld (scontrol ping)" slurmctld scontrol ping
    slurmd || start_failed slurmd
    # A node left drained or down in the saved state of an earlier run would never run a job.
    sleep 1
    case $(node_state) in
        drain* | down* | fail*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    wait_for "node ${NODE} to be idle (sinfo)" "slurmctld slurmd" node_idle
    # Jobs of an earlier run that died with the cluster come back requeued: drop them.
    cancel_all_jobs
    local out
    out=$(timeout "$TIMEOUT" srun --quiet -N1 -n1 -t 1 hostname 2>&1) || {
        log "srun hostname failed: $out"
        show_log "${LOGFILE[slurmctld]}"
        show_log "${LOGFILE[slurmd]}"
        die "the SLURM cluster does not run jobs"
    }
    log "up: node ${NODE}, partition ${PARTITION}, accounting $([[ $ACCOUNTING == 1 ]] && echo on || echo off), srun hostname -> ${out}"
    print_usage_hint
}

print_usage_hint() {
    if [[ $(readlink "$ETC_CONF" 2>/dev/null || true) == "$CONF" ]]; then
        echo "# SLURM is up: sinfo, sbatch, srun, sacct and submitit use $ETC_CONF -> $CONF"
    else
        echo "export SLURM_CONF=$CONF"
    fi
}

cancel_all_jobs() {
    local ids
    ids=$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ') || return 0
    [[ -n ${ids// /} ]] || return 0
    log "cancelling jobs: ${ids}"
    # shellcheck disable=SC2086 # one argument per job id
    scancel $ids 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while [[ -n $(squeue -h -o '%A' 2>/dev/null) ]] && ((SECONDS < deadline)); do
        sleep 0.5
    done
}

cmd_stop() {
    is_root || die "stop needs root"
    local pid pids
    # Cancel the jobs while the controller still runs, so that they end (and are saved as ended)
    # instead of coming back as node failures at the next start.
    if [[ -n $(daemon_pid slurmctld) ]] && scontrol ping >/dev/null 2>&1; then
        cancel_all_jobs
    fi
    # Job processes that outlived the cancel (slurmd knows them all).
    if [[ -n $(daemon_pid slurmd) ]]; then
        pids=$(scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}') || true
        # shellcheck disable=SC2086 # one argument per pid
        [[ -z $pids ]] || stop_pids "job processes" 5 $pids
    fi
    pid=$(daemon_pid slurmd) && [[ -n $pid ]] && stop_pids slurmd 10 "$pid"
    pid=$(daemon_pid slurmctld) && [[ -n $pid ]] && stop_pids slurmctld 10 "$pid"
    # slurmstepd (one per job step) exits with its job; a hung one is ours too: this machine
    # runs no other slurmd.
    pids=$(ps -eo pid=,comm= | awk '$2 == "slurmstepd" {print $1}')
    # shellcheck disable=SC2086
    [[ -z $pids ]] || stop_pids slurmstepd 5 $pids
    pid=$(daemon_pid slurmdbd) && [[ -n $pid ]] && stop_pids slurmdbd 10 "$pid"
    # SIGTERM is MariaDB's clean shutdown (it flushes InnoDB: allow it time).
    pid=$(daemon_pid mariadbd) && [[ -n $pid ]] && stop_pids mariadbd 60 "$pid"
    pid=$(daemon_pid munged) && [[ -n $pid ]] && stop_pids munged 10 "$pid"
    log "stopped"
}

cmd_status() {
    local rc=0 name pid
    for name in $(daemons); do
        pid=$(daemon_pid "$name")
        if [[ -n $pid ]]; then
            echo "$name: running (pid $pid)"
        else
            echo "$name: stopped"
            rc=3
        fi
    done
    if ((rc == 0)); then
        echo "node $NODE: $(node_state || true)"
    fi
    return "$rc"
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
