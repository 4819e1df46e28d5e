# Helpers shared by deploy/local-slurm.sh and deploy/tracking-server.sh (sourced, not run).
# shellcheck shell=bash

log() { printf '%s: %s\n' "${PROG}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [[ ${EUID} -eq 0 ]]; }

# pid_alive PIDFILE: true when the file names a live process.
pid_alive() {
    local pid
    [[ -r $1 ]] || return 1
    pid=$(<"$1")
    # /proc rather than kill -0, which fails for another user's process (status run as non-root).
    [[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]]
}

# wait_gone TIMEOUT_S PID...: wait until none of the processes exists; false on timeout.
wait_gone() {
    local deadline=$((SECONDS + $1)) pid alive
    shift
    while :; do
        alive=0
        for pid in "$@"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || return 0
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# stop_pids NAME GRACE_S PID...: SIGTERM, then SIGKILL whatever is still there after GRACE_S.
stop_pids() {
    local name=$1 grace=$2
    shift 2
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    if ! wait_gone "$grace" "$@"; then
        log "${name} did not exit after SIGTERM, sending SIGKILL"
        kill -KILL "$@" 2>/dev/null || true
        wait_gone 5 "$@" || die "${name} (pid $*) survived SIGKILL"
    fi
}

# ensure_packages PKG...: apt-get install the Debian packages that are not installed yet.
# Package maintainer scripts try to start their services (invoke-rc.d); there is no init
# system to run them here and this script starts the daemons itself, so a policy-rc.d that
# answers 101 ("action forbidden") is put in place for the duration of the install. An
# existing policy-rc.d (Docker images ship one) is put back afterwards.
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    is_root || die "Debian package(s) ${missing[*]} missing: run this script as root once, or: apt-get install ${missing[*]}"

    local policy=/usr/sbin/policy-rc.d backup="" rc=0
    if [[ -e $policy ]]; then
        backup=$(mktemp)
        cp -p "$policy" "$backup"
    fi
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    log "installing ${missing[*]} (apt-get)"
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq &&
            apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    } >"${TMPDIR:-/tmp}/${PROG}-apt.log" 2>&1 || rc=$?
    if [[ -n $backup ]]; then
        mv -f "$backup" "$policy"
    else
        rm -f "$policy"
    fi
    if ((rc)); then
        tail -n 20 "${TMPDIR:-/tmp}/${PROG}-apt.log" >&2
        die "apt-get install ${missing[*]} failed (rc=${rc}), full log: ${TMPDIR:-/tmp}/${PROG}-apt.log"
    fi
}

# show_log FILE: the end of a daemon log, for error messages.
show_log() {
    if [[ -r $1 ]]; then
        log "--- last lines of $1 ---"
        tail -n 25 "$1" >&2
    else
        log "--- $1: no log written ---"
    fi
}
