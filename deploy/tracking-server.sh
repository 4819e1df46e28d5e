#!/usr/bin/env bash
# An MLflow tracking server with authentication, backed by PostgreSQL, on this machine: the
# shared tracking store of sweeps whose jobs run elsewhere (SLURM jobs, `make test-cluster`, CI).
#
#   deploy/tracking-server.sh start           install postgresql if missing (apt-get), start a
#                                             PostgreSQL cluster and `mlflow server --app-name
#                                             basic-auth`, wait until it answers /health
#   deploy/tracking-server.sh stop            stop the MLflow server (its whole process group)
#                                             and PostgreSQL; leaves nothing running
#   deploy/tracking-server.sh restart-mlflow  stop and start the MLflow server only (PostgreSQL
#                                             and the data stay)
#   deploy/tracking-server.sh status          say what runs (exit 0 only when both do)
#   deploy/tracking-server.sh env             print the client settings (no secret in them)
#
# start/stop need root (PostgreSQL is run as user postgres). All commands are idempotent.
# A client authenticates with:
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5055 MLFLOW_TRACKING_USERNAME=admin
#   export MLFLOW_TRACKING_PASSWORD="$(cat /var/lib/mnist-exp-tracking/admin-password)"
#
# Environment (all optional):
#   MNIST_EXP_TRACKING_STATE   state folder, mode 0711: secrets (0600), PostgreSQL data, MLflow's
#                              artifacts and logs (default /var/lib/mnist-exp-tracking, outside
#                              the repository)
#   MNIST_EXP_MLFLOW_PORT      port of the MLflow server on 127.0.0.1 (default 5055)
#   MNIST_EXP_MLFLOW_WORKERS   uvicorn worker processes (default 2)
#   MNIST_EXP_PG_PORT          port of the PostgreSQL cluster on localhost (default 5433)
#   MNIST_EXP_PG_CLUSTER       name of the PostgreSQL cluster (default mnistexp: a cluster of its
#                              own, created with its data in the state folder, so that stop never
#                              touches a database server someone else uses; "main" would reuse
#                              the packaged cluster, with the port it is configured with)
#   MNIST_EXP_ADMIN_PASSWORD   the MLflow admin password (at least 12 characters); default: a
#                              random one generated at the first start. Changing it later rotates
#                              the password of the existing admin user.
#   MNIST_EXP_VENV             the Python environment with mlflow[auth] and psycopg2-binary
#                              (default: the repository's .venv)
#   MNIST_EXP_TRACKING_TIMEOUT seconds to wait for each server to answer (default 90)
#
# Secrets (the PostgreSQL password, the admin password, Flask's secret key) are generated into
# 0600 files of the state folder and reach the processes through files and environment
# variables: never a command line (visible to every user in ps), a log, or the repository.
#  - PostgreSQL: the role's password is set as a SCRAM verifier computed here, so the server never
#    sees (or logs) the password itself; MLflow's database URIs carry no password: libpq reads it
#    from the pgpass file named by PGPASSFILE.
#  - The basic-auth app reads admin_password from the ini file named by MLFLOW_AUTH_CONFIG_PATH,
#    but only to create the admin user in an empty auth database; later changes are applied here
#    through the update-password API (see rotate_admin_password).
# The URIs name the driver (postgresql+psycopg2://): SQLAlchemy 2.1 maps a bare postgresql:// to
# psycopg 3, which is not installed.
# The auth database is a second PostgreSQL database (not SQLite): all the uvicorn workers open it
# at once, and its Alembic version table would collide with the tracking store's in one database.
set -euo pipefail

PROG=tracking-server.sh
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

REPO=$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")
STATE=${MNIST_EXP_TRACKING_STATE:-/var/lib/mnist-exp-tracking}
PORT=${MNIST_EXP_MLFLOW_PORT:-5055}
WORKERS=${MNIST_EXP_MLFLOW_WORKERS:-2}
PG_PORT_WANTED=${MNIST_EXP_PG_PORT:-5433}
PG_CLUSTER=${MNIST_EXP_PG_CLUSTER:-mnistexp}
VENV=${MNIST_EXP_VENV:-$REPO/.venv}
TIMEOUT=${MNIST_EXP_TRACKING_TIMEOUT:-90}

HOST=127.0.0.1
URI=http://$HOST:$PORT
PG_ROLE=mlflow
PG_DB=mlflow
PG_AUTH_DB=mlflow_auth
PG_OPTUNA_DB=optuna  # Optuna studies that searches on several machines share (docs/search.md)
PGPASS=$STATE/pgpass
ADMIN_USER="admin"
ADMIN_PASSWORD_FILE=$STATE/admin-password
SECRET_KEY_FILE=$STATE/flask-secret-key
AUTH_INI=$STATE/basic_auth.ini
MLFLOW_PID=$STATE/mlflow.pid
MLFLOW_LOG=$STATE/mlflow.log
ARTIFACTS=$STATE/artifacts
PYTHON=$VENV/bin/python

# pg_ctlcluster hands over to systemctl when systemd runs; the cluster is ours to start and stop.
export _SYSTEMCTL_SKIP_REDIRECT=1

pg_version() { # the newest PostgreSQL server installed (nothing when none is)
    find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -n | tail -n 1
}
# The cluster's line of pg_lsclusters: version cluster port status owner datadir log
pg_cluster_line() { pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" -v v="$(pg_version)" '$1 == v && $2 == c'; }
pg_port() { pg_cluster_line | awk '{print $3}'; }
pg_running() { [[ $(pg_cluster_line | awk '{print $4}') == online* ]]; }
# psql as the database superuser, through the Unix socket (peer authentication); the SQL comes
# on stdin.
pg_psql() { (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$(pg_port)" -d postgres "$@"); }

# new_secret: 32 random characters from [A-Za-z0-9]: nothing to quote in a pgpass or ini file.
new_secret() {
    local s=""
    while ((${#s} < 32)); do
        s+=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    done
    echo "${s:0:32}"
}

# secret_file FILE: create it with a new secret unless it exists; mode 0600 either way.
secret_file() {
    if [[ ! -s $1 ]]; then
        (
            umask 077
            new_secret >"$1"
        )
    fi
    chmod 0600 "$1"
}

check_venv() {
    [[ -x $VENV/bin/mlflow ]] || die "no mlflow in $VENV (run make setup, or set MNIST_EXP_VENV)"
    "$PYTHON" -c 'import psycopg2, flask_wtf' 2>/dev/null ||
        die "$VENV lacks psycopg2-binary or mlflow[auth]: $VENV/bin/pip install psycopg2-binary 'mlflow[auth]'"
}

start_postgres() {
    local version
    version=$(pg_version)
    [[ -n $version ]] || die "no PostgreSQL server in /usr/lib/postgresql"
    if [[ -z $(pg_cluster_line) ]]; then
        [[ $PG_CLUSTER != main ]] || die "PostgreSQL cluster $version/main does not exist"
        log "creating PostgreSQL cluster $version/$PG_CLUSTER (port $PG_PORT_WANTED, data in $STATE/pg)"
        install -d -o postgres -g postgres -m 0700 "$STATE/pg"
        pg_createcluster --port "$PG_PORT_WANTED" --datadir "$STATE/pg/data" \
            --logfile "$STATE/pg/postgresql.log" --start-conf manual "$version" "$PG_CLUSTER" \
            -- --auth-local peer --auth-host scram-sha-256 >"$STATE/pg/create.log" 2>&1 || {
            show_log "$STATE/pg/create.log"
            die "pg_createcluster failed"
        }
    fi
    if ! pg_running; then
        pg_ctlcluster "$version" "$PG_CLUSTER" start || {
            show_log "$(pg_cluster_line | awk '{print $7}')"
            die "PostgreSQL $version/$PG_CLUSTER did not start"
        }
    fi
    local deadline=$((SECONDS + TIMEOUT))
    until pg_psql -c 'SELECT 1' >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "PostgreSQL $version/$PG_CLUSTER does not answer"
        sleep 0.5
    done
}

# The role and databases of MLflow; the role's password (re)set from the pgpass file each start.
setup_database() {
    local password verifier port
    port=$(pg_port)
    if [[ ! -s $PGPASS ]] || ! grep -q "^127.0.0.1:${port}:" "$PGPASS"; then
        password=$(new_secret)
    else
        password=$(head -n 1 "$PGPASS" | cut -d: -f5)
    fi
    (
        umask 077
        # hostname:port:database:username:password; "*" covers both MLflow databases.
        printf '127.0.0.1:%s:*:%s:%s\nlocalhost:%s:*:%s:%s\n' \
            "$port" "$PG_ROLE" "$password" "$port" "$PG_ROLE" "$password" >"$PGPASS"
    )
    # SCRAM-SHA-256 verifier (PostgreSQL's own format), computed from the password given on stdin.
    # shellcheck disable=SC2016 # Python code, with its own $ signs
    verifier=$("$PYTHON" -c '
import base64, hashlib, hmac, os, sys
password = sys.stdin.readline().rstrip("\n").encode()
salt, iterations = os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
client_key = hmac.new(salted, b"Client Key", "sha256").digest()
server_key = hmac.new(salted, b"Server Key", "sha256").digest()
b64 = lambda b: base64.b64encode(b).decode()
print(f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}")
' <<<"$password")
    pg_psql <<EOF
SELECT 'CREATE ROLE ${PG_ROLE} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${PG_ROLE}')\gexec
ALTER ROLE ${PG_ROLE} PASSWORD '${verifier}';
SELECT 'CREATE DATABASE ${PG_DB} OWNER ${PG_ROLE}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '${PG_DB}')\gexec
SELECT 'CREATE DATABASE ${PG_AUTH_DB} OWNER ${PG_ROLE}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '${PG_AUTH_DB}')\gexec
SELECT 'CREATE DATABASE ${PG_OPTUNA_DB} OWNER ${PG_ROLE}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '${PG_OPTUNA_DB}')\gexec
EOF
}

# write_ini PASSWORD: the basic-auth app's configuration, with PASSWORD as admin_password.
write_ini() {
    (
        umask 077
        # configparser reads "%" as the start of an interpolation: double it.
        cat >"$AUTH_INI" <<EOF
# Generated by deploy/tracking-server.sh (mode 0600: it holds the admin bootstrap password).
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg2://${PG_ROLE}@127.0.0.1:$(pg_port)/${PG_AUTH_DB}
admin_username = ${ADMIN_USER}
admin_password = ${1//%/%%}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
EOF
    )
    chmod 0600 "$AUTH_INI"
}

write_auth_config() {
    local wanted current=""
    secret_file "$SECRET_KEY_FILE"
    [[ ! -s $ADMIN_PASSWORD_FILE ]] || current=$(<"$ADMIN_PASSWORD_FILE")
    wanted=${MNIST_EXP_ADMIN_PASSWORD:-${current:-$(new_secret)}}
    ((${#wanted} >= 12)) || die "MNIST_EXP_ADMIN_PASSWORD: MLflow wants at least 12 characters"
    [[ $wanted =~ ^[^[:space:]]([^$'\n']*[^[:space:]])?$ ]] ||
        die "MNIST_EXP_ADMIN_PASSWORD: one line, no leading or trailing blanks"
    if [[ -z $current ]]; then
        (
            umask 077
            printf '%s\n' "$wanted" >"$ADMIN_PASSWORD_FILE"
        )
        current=$wanted
    fi
    chmod 0600 "$ADMIN_PASSWORD_FILE"
    # MLflow uses admin_password only to create the admin user in an empty auth database: give it
    # the current password (the one to create after the auth database was dropped, say). A
    # different wanted password is applied through the API once the server runs.
    write_ini "$current"
    if [[ $wanted != "$current" ]]; then
        ROTATE_TO=$wanted
    fi
}

mlflow_pid() {
    if pid_alive "$MLFLOW_PID"; then cat "$MLFLOW_PID"; fi
}

healthy() {
    if command -v curl >/dev/null; then
        curl -fsS -o /dev/null --max-time 3 "$URI/health" 2>/dev/null
        return
    fi
    "$PYTHON" -c '
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/health", timeout=3) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
' "$URI"
}

# auth_check: exit 0 when the admin password file's password logs in, 2 when it is refused.
auth_check() {
    MLFLOW_TRACKING_PASSWORD=$(<"$ADMIN_PASSWORD_FILE") "$PYTHON" -c '
import base64, os, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1] + "/api/2.0/mlflow/users/get?username=" + sys.argv[2])
credentials = sys.argv[2] + ":" + os.environ["MLFLOW_TRACKING_PASSWORD"]
token = base64.b64encode(credentials.encode()).decode()
request.add_header("Authorization", "Basic " + token)
try:
    urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as e:
    sys.exit(2 if e.code == 401 else 1)
' "$URI" "$ADMIN_USER"
}

# MLflow applies admin_password only when it creates the admin user: change the existing admin's
# password through the API (authenticated with the current one), then record the new one.
rotate_admin_password() {
    [[ -n ${ROTATE_TO:-} ]] || return 0
    log "changing the MLflow admin password (MNIST_EXP_ADMIN_PASSWORD differs from $ADMIN_PASSWORD_FILE)"
    MLFLOW_TRACKING_USERNAME=$ADMIN_USER MLFLOW_TRACKING_PASSWORD=$(<"$ADMIN_PASSWORD_FILE") \
        NEW_PASSWORD=$ROTATE_TO "$PYTHON" -c '
import os, sys
from mlflow.server.auth.client import AuthServiceClient
AuthServiceClient(sys.argv[1]).update_user_password(
    sys.argv[2], os.environ["NEW_PASSWORD"], current_password=os.environ["MLFLOW_TRACKING_PASSWORD"])
' "$URI" "$ADMIN_USER" >>"$MLFLOW_LOG" 2>&1 || die "could not change the admin password (see $MLFLOW_LOG)"
    (
        umask 077
        printf '%s\n' "$ROTATE_TO" >"$ADMIN_PASSWORD_FILE"
    )
    write_ini "$ROTATE_TO"
    ROTATE_TO=""
}

start_mlflow() {
    if [[ -n $(mlflow_pid) ]]; then
        log "mlflow server already running (pid $(mlflow_pid))"
        return 0
    fi
    if healthy; then
        die "something else answers on $URI (set MNIST_EXP_MLFLOW_PORT)"
    fi
    write_auth_config
    mkdir -p "$ARTIFACTS"
    local t0=$SECONDS
    (
        # Secrets travel in the environment of the server only, read from the 0600 files.
        MLFLOW_FLASK_SERVER_SECRET_KEY=$(<"$SECRET_KEY_FILE")
        export MLFLOW_FLASK_SERVER_SECRET_KEY
        export PGPASSFILE=$PGPASS MLFLOW_AUTH_CONFIG_PATH=$AUTH_INI
        # No GenAI job workers (huey consumers); no usage telemetry (no internet here anyway).
        export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true
        # These would override the ini file.
        unset MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_TRACKING_URI
        cd "$STATE" # anything written relative to the working directory lands in the state folder
        # setsid: a session (and process group) of its own, whose id is the pid recorded below;
        # stop signals the whole group: `mlflow server`, uvicorn's supervisor and its workers.
        exec setsid "$VENV/bin/mlflow" server --app-name basic-auth --host "$HOST" --port "$PORT" \
            --workers "$WORKERS" \
            --backend-store-uri "postgresql+psycopg2://${PG_ROLE}@127.0.0.1:$(pg_port)/${PG_DB}" \
            --artifacts-destination "$ARTIFACTS" \
            </dev/null >>"$MLFLOW_LOG" 2>&1
    ) &
    echo $! >"$MLFLOW_PID"
    until healthy; do
        if [[ -z $(mlflow_pid) ]]; then
            show_log "$MLFLOW_LOG"
            die "mlflow server exited"
        fi
        if ((SECONDS - t0 >= TIMEOUT)); then
            show_log "$MLFLOW_LOG"
            stop_mlflow
            die "mlflow server did not answer $URI/health within ${TIMEOUT}s"
        fi
        sleep 0.5
    done
    rotate_admin_password
    local rc=0
    auth_check || rc=$?
    if ((rc != 0)); then
        # A server that the recorded credentials cannot use is of no use to the tests: stop it.
        ((rc == 2)) || show_log "$MLFLOW_LOG"
        stop_mlflow
        ((rc != 2)) || die "the admin password in $ADMIN_PASSWORD_FILE is refused: the auth database has an admin user with another password (drop database $PG_AUTH_DB to start over)"
        die "mlflow server answers /health but its auth API fails"
    fi
    log "mlflow server up on $URI in $((SECONDS - t0)) s (pid $(mlflow_pid), log $MLFLOW_LOG)"
}

stop_mlflow() {
    local pid
    pid=$(mlflow_pid)
    if [[ -n $pid ]]; then
        # The whole process group; uvicorn's workers exit on SIGTERM within a second or two.
        kill -TERM -- "-$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while pgrep -g "$pid" >/dev/null && ((SECONDS < deadline)); do
            sleep 0.3
        done
        if pgrep -g "$pid" >/dev/null; then
            log "mlflow server did not exit after SIGTERM, sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || true
            sleep 1
        fi
    fi
    rm -f "$MLFLOW_PID"
}

print_env() {
    cat <<EOF
export MLFLOW_TRACKING_URI=$URI MLFLOW_TRACKING_USERNAME=$ADMIN_USER
export MLFLOW_TRACKING_PASSWORD="\$(cat $ADMIN_PASSWORD_FILE)"
EOF
}

prepare() {
    is_root || die "$1 needs root (PostgreSQL runs as user postgres)"
    ensure_packages postgresql
    check_venv
    # 0711: user postgres must traverse it to its data folder; nobody else may list it, and the
    # secrets in it are 0600.
    install -d -m 0711 "$STATE"
    chmod 0711 "$STATE"
}

cmd_start() {
    prepare start
    start_postgres
    setup_database
    start_mlflow
    print_env
}

cmd_restart_mlflow() {
    prepare restart-mlflow
    local t0=$SECONDS
    stop_mlflow
    pg_running || start_postgres
    start_mlflow
    log "restart-mlflow took $((SECONDS - t0)) s"
}

cmd_stop() {
    is_root || die "stop needs root"
    stop_mlflow
    if [[ -n $(pg_cluster_line) ]] && pg_running; then
        pg_ctlcluster "$(pg_version)" "$PG_CLUSTER" stop -m fast
    fi
    log "stopped"
}

cmd_status() {
    local rc=0 pid
    if [[ -n $(pg_cluster_line) ]] && pg_running; then
        echo "postgresql $(pg_version)/$PG_CLUSTER: running (port $(pg_port))"
    else
        echo "postgresql $(pg_version)/$PG_CLUSTER: stopped"
        rc=3
    fi
    pid=$(mlflow_pid)
    if [[ -n $pid ]] && healthy; then
        echo "mlflow server: running (pid $pid, $URI)"
    elif [[ -n $pid ]]; then
        echo "mlflow server: not answering (pid $pid, $URI)"
        rc=3
    else
        echo "mlflow server: stopped"
        rc=3
    fi
    return "$rc"
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart-mlflow) cmd_restart_mlflow ;;
    status) cmd_status ;;
    env) print_env ;;
    *)
        echo "usage: $0 start|stop|restart-mlflow|status|env" >&2
        exit 2
        ;;
esac
