#!/usr/bin/env bash
# A real one-node SLURM cluster (with accounting) for tests and CI on a Debian 12 machine
# where we are root and there is no systemd.
#
# Usage: scripts/slurm/cluster.sh {install|start|stop|restart|status|env}
#   install  install the Debian packages (skipped when they are already there)
#   start    install if needed, write configs, start munge, mariadb, slurmdbd, slurmctld, slurmd
#            and wait until the node is idle; idempotent (already-running daemons are kept)
#   stop     cancel jobs, then stop the daemons through their pid files
#   status   show which daemons run and what sinfo says; exit 1 unless all run
#   env      print `export SLURM_CONF=...`; use as: eval "$(scripts/slurm/cluster.sh env)"
#
# Everything (configs, pid files, logs, spool, MariaDB datadir) lives under
# ${EQPROP_SLURM_DIR:-/tmp/eqprop-slurm}; `stop` then `rm -rf` that directory resets the cluster
# (job ids restart at 1 afterwards). Only munge's socket is the system one, /run/munge; a munged
# already serving it is reused and left alone.
# The daemons run as root and read their configs from that directory, and its default name is
# easy to guess: a directory that is not root's own (owned by root, a real directory, not
# writable by group or others, in a parent that only root can rename it in) is refused, never
# used. The database password never appears on a command line (the SQL goes on stdin).
#
# Knobs (environment): EQPROP_SLURM_DIR, EQPROP_SLURM_TIMEOUT (seconds per wait, default 60),
# EQPROP_SLURM_MAXTIME (partition MaxTime in minutes, default 60), EQPROP_SLURM_CTLD_PORT (6817),
# EQPROP_SLURM_SLURMD_PORT (6818), EQPROP_SLURM_DBD_PORT (6819), EQPROP_SLURM_DB_PORT (3306).

set -euo pipefail

DIR="${EQPROP_SLURM_DIR:-/tmp/eqprop-slurm}"
TIMEOUT="${EQPROP_SLURM_TIMEOUT:-60}"
MAXTIME="${EQPROP_SLURM_MAXTIME:-60}"
CTLD_PORT="${EQPROP_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${EQPROP_SLURM_SLURMD_PORT:-6818}"
DBD_PORT="${EQPROP_SLURM_DBD_PORT:-6819}"
DB_PORT="${EQPROP_SLURM_DB_PORT:-3306}"

ETC="$DIR/etc"
RUN="$DIR/run"
LOG="$DIR/log"
SPOOL="$DIR/spool"
DB_DATA="$DIR/mariadb"
DB_SOCK="$RUN/mariadb.sock"
MUNGE_DIR="$DIR/munge"
# Standard socket on purpose: slurm 22.05 ignores AuthInfo=socket=... for its connection to
# slurmdbd, so a private socket breaks accounting (slurmctld dies "no TRES from database").
MUNGE_SOCK=/run/munge/munge.socket.2
MUNGE_KEY=/etc/munge/munge.key
SLURM_CONF_FILE="$ETC/slurm.conf"

PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server-core mariadb-client-core)

die() {
    echo "cluster.sh: error: $*" >&2
    exit 1
}

say() { echo "cluster.sh: $*" >&2; }

# munged runs as user munge and can only write its pid file into its own directory.
pidfile() {
    if [[ "$1" == munged ]]; then echo "$MUNGE_DIR/munged.pid"; else echo "$RUN/$1.pid"; fi
}

# A pid file can outlive its process (kill -9, reboot of a VM that keeps /tmp), and the pid can
# be reused; only trust it if the process still runs the expected program.
running() {
    local f pid
    f="$(pidfile "$1")"
    [[ -s "$f" ]] || return 1
    pid="$(tr -dc 0-9 <"$f")"
    [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
    local comm state
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    # An exited daemon that nobody reaped yet is a zombie: kill -0 still succeeds on it.
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != Z ]] || return 1
    case "$1" in
        mariadb) [[ "$comm" == mariadbd || "$comm" == mysqld ]] ;;
        *) [[ "$comm" == "$1" ]] ;;
    esac
}

dump_logs() {
    local f
    for f in "$LOG"/*.log; do
        [[ -f "$f" ]] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 30 "$f" >&2 || true
    done
}

# Print the error again after the logs: CI shows the bottom of the output.
fail() {
    echo "cluster.sh: error: $*" >&2
    dump_logs
    echo "cluster.sh: error: $* (daemon logs above, all under $LOG)" >&2
    exit 1
}

# wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds, or fail with the logs.
wait_for() {
    local what="$1"
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.2
    done
}

# Size of each daemon's log when we launched it, so that only this start's lines are searched.
declare -A LOG_OFFSET=()

mark_log() {
    LOG_OFFSET[$1]="$(stat -c %s "$LOG/$1.log" 2>/dev/null || echo 0)"
}

# Lines that mean the daemon is about to exit. A slurm daemon can die before it writes its pid
# file (e.g. "fatal: ... Address already in use"), so the pid file alone cannot tell.
died_in_log() {
    local pattern
    case "$1" in
        mariadb) pattern='\[ERROR\] Aborting' ;;
        *) pattern='fatal:' ;;
    esac
    tail -c "+$((${LOG_OFFSET[$1]:-0} + 1))" "$LOG/$1.log" 2>/dev/null | grep -q -- "$pattern"
}

# wait_daemon NAME DESCRIPTION COMMAND...: like wait_for, but give up as soon as daemon NAME
# has died (fatal line in its log, or seen running and then gone) instead of waiting out the
# timeout.
wait_daemon() {
    local name="$1" what="$2" seen=0
    shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if running "$name"; then
            seen=1
        elif ((seen)); then
            fail "$name exited while waiting for $what"
        fi
        died_in_log "$name" && fail "$name died while waiting for $what"
        ((SECONDS < deadline)) || fail "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.2
    done
}

need_root() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (slurmd and the private MariaDB run as root)"
}

# not_private PATH [sticky]: why others than root could change what PATH holds (nothing if they
# cannot). With `sticky`, a sticky directory writable by all (/tmp) is fine: nobody can rename or
# replace a root-owned entry there.
not_private() {
    local path="$1" owner mode
    if [[ -L "$path" || ! -d "$path" ]]; then
        echo "$path is a symbolic link or not a directory"
        return
    fi
    owner="$(stat -c %u "$path")"
    mode=$((8#$(stat -c %a "$path")))
    if [[ "$owner" != 0 ]]; then
        echo "$path belongs to uid $owner, not root"
    elif ((mode & 8#022)) && ! { [[ "${2:-}" == sticky ]] && ((mode & 8#1000)); }; then
        printf '%s is writable by group or others (mode %o)\n' "$path" "$mode"
    fi
}

# state_dir [create]: check the state directory (creating it first, root's and 0755, with
# `create`) and its parent; die if anyone but root could have put or changed files in it.
state_dir() {
    if [[ "${1:-}" == create && ! -e "$DIR" && ! -L "$DIR" ]]; then
        mkdir -p "$(dirname "$DIR")"
        mkdir -m 755 "$DIR" 2>/dev/null || true # someone else may have been faster: checked below
    fi
    [[ -e "$DIR" || -L "$DIR" ]] || return 0
    local why
    why="$(not_private "$DIR")"
    if [[ -z "$why" ]]; then
        why="$(not_private "$(realpath "$(dirname "$DIR")")" sticky)"
        [[ -z "$why" ]] || why="$why: others could replace $DIR"
    fi
    [[ -z "$why" ]] || die "refusing the state directory: $why. Someone else may have made it to control" \
        "root's daemons; remove it (after a look at it) or set EQPROP_SLURM_DIR to a new path in a directory of root's"
}

# ---------------------------------------------------------------------------------------------
# install

installed() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
}

cmd_install() {
    if installed; then
        say "packages already installed"
        return 0
    fi
    need_root
    state_dir create
    say "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh CI image has empty apt lists; only refresh them when the first attempt fails so a
    # cached machine does not pay for an update.
    mkdir -p "$LOG"
    local log="$LOG/apt.log"
    if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"$log" 2>&1; then
        apt-get update -qq >>"$log" 2>&1 || true
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$log" 2>&1 \
            || { tail -n 30 "$log" >&2; die "apt-get install failed (full log: $log)"; }
    fi
    installed || die "packages still missing after apt-get install"
}

# ---------------------------------------------------------------------------------------------
# configuration

# Write a file only when its content changes, so that a second `start` on a running cluster does
# not touch configs the daemons have already read; SLURM_CONF_CHANGED tells whether it had to.
SLURM_CONF_CHANGED=0
write_if_changed() {
    local dest="$1" mode="$2" tmp
    tmp="$(mktemp "$dest.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f "$dest" ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$dest"
        [[ "$dest" != "$SLURM_CONF_FILE" ]] || SLURM_CONF_CHANGED=1
    fi
}

db_password() {
    # Generated per state dir: nothing secret is stored in the repository, and `rm -rf` of the
    # state dir also forgets it together with the database that uses it.
    local f="$ETC/db.password"
    if [[ ! -s "$f" ]]; then
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$f")
    fi
    cat "$f"
}

write_configs() {
    mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d" "$MUNGE_DIR"
    # munged refuses a socket/log directory that others can write to, and runs as user munge.
    chmod 755 "$DIR" "$RUN" "$LOG"
    chown -h munge:munge "$MUNGE_DIR"
    chmod 755 "$MUNGE_DIR"

    local node_line host mem
    node_line="$(slurmd -C | head -n 1)"
    host="$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
    [[ -n "$host" && -n "$mem" ]] || die "cannot parse 'slurmd -C': $node_line"
    # slurmd drains a node that has less memory than configured; 5% headroom keeps small
    # differences (kernel reservations after a reboot, a slightly different VM) from doing that.
    local real_mem=$((mem * 95 / 100))
    # Keep CPUs/Boards/Sockets/Cores/Threads exactly as slurmd sees them.
    local topo
    topo="$(sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//' <<<"$node_line")"

    write_if_changed "$SLURM_CONF_FILE" 644 <<EOF
# Generated by scripts/slurm/cluster.sh; rewritten on every start.
ClusterName=eqprop
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root

AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job otherwise waits ~2.5 min before it may run again.
AuthInfo=cred_expire=10

StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups in this container/VM.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
# Memory is not a consumable: several small test jobs may share the node.
SelectTypeParameters=CR_Core

AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none

# Fast scheduling for tests; impossible requests fail at submission instead of pending forever.
SchedulerParameters=sched_interval=2,bf_interval=1
EnforcePartLimits=ALL
KillWait=5
MailProg=/bin/true
# The node comes back by itself after a restart of the daemons.
ReturnToService=2

NodeName=$host NodeAddr=127.0.0.1 $topo RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=$MAXTIME State=UP
EOF

    # slurmdbd refuses to start unless this file is private (it holds the DB password).
    write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF
# Generated by scripts/slurm/cluster.sh; rewritten on every start.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF
}

# ---------------------------------------------------------------------------------------------
# daemons

# launch_slurm NAME ARGS...: slurm daemons fork into the background themselves, after parsing
# their config, so a config error shows up as the exit status here. Their stdout/stderr go to
# the log, never to ours: a caller capturing our output ($(...), a CI pipe) would otherwise
# hang until the daemons exit.
launch_slurm() {
    local name="$1"
    shift
    mark_log "$name"
    SLURM_CONF="$SLURM_CONF_FILE" "$name" "$@" </dev/null >>"$LOG/$name.log" 2>&1 \
        || fail "$name refused to start (exit status $?)"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munged() {
    running munged && return 0
    # A munged that is already serving the standard socket (a host with munge set up) is fine
    # to share; we then neither start nor stop it.
    if munge_ok; then
        say "using the munged already running on $MUNGE_SOCK"
        return 0
    fi
    if [[ ! -s "$MUNGE_KEY" ]]; then
        say "creating $MUNGE_KEY"
        mungekey --create --keyfile="$MUNGE_KEY"
        chown -h munge:munge "$MUNGE_KEY"
        chmod 400 "$MUNGE_KEY"
    fi
    # No systemd, so nothing creates the runtime directory for us.
    mkdir -p "$(dirname "$MUNGE_SOCK")"
    chown -h munge:munge "$(dirname "$MUNGE_SOCK")"
    chmod 755 "$(dirname "$MUNGE_SOCK")"
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "$(pidfile munged)"
    # munged insists on owning its log file.
    touch "$LOG/munged.log"
    chown -h munge:munge "$LOG/munged.log"
    # munged refuses to run as root; it forks and writes its own pid file.
    runuser -u munge -- /usr/sbin/munged \
        --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" \
        --pid-file="$(pidfile munged)" --log-file="$LOG/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" </dev/null >>"$LOG/munged.log" 2>&1 \
        || fail "munged did not start"
    wait_for "munged pid file" running munged
    wait_for "munge to answer" munge_ok
}

# db_sql SQL: the SQL goes on stdin (printf is a shell builtin), never on a command line that
# any user can read in /proc.
db_sql() {
    printf '%s\n' "$1" | mariadb --no-defaults --protocol=socket --socket="$DB_SOCK" -uroot
}

start_mariadb() {
    running mariadb && return 0
    if [[ ! -d "$DB_DATA/mysql" ]]; then
        rm -rf "$DB_DATA"
        mariadb-install-db --no-defaults --user=root --datadir="$DB_DATA" \
            --auth-root-authentication-method=socket --skip-test-db \
            >>"$LOG/mariadb.log" 2>&1 || fail "mariadb-install-db failed"
    fi
    mark_log mariadb
    # mariadbd does not daemonize: setsid detaches it from our session and terminal.
    # innodb_lock_wait_timeout=900 is what slurmdbd asks for (it warns otherwise).
    setsid /usr/sbin/mariadbd --no-defaults --user=root \
        --datadir="$DB_DATA" --socket="$DB_SOCK" --pid-file="$(pidfile mariadb)" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$LOG/mariadb.log" \
        --innodb-lock-wait-timeout=900 --skip-name-resolve </dev/null >>"$LOG/mariadb.log" 2>&1 &
    wait_daemon mariadb "mariadb to accept connections" db_sql 'SELECT 1'
    local pw
    pw="$(db_password)"
    # ALTER as well as CREATE: the password file may have been regenerated for an old datadir.
    db_sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
            ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
        || fail "cannot create the slurm database user"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_slurmdbd() {
    running slurmdbd && return 0
    # slurmdbd has no -f: it finds slurmdbd.conf next to $SLURM_CONF.
    launch_slurm slurmdbd
    wait_daemon slurmdbd "slurmdbd on port $DBD_PORT" port_open "$DBD_PORT"
    wait_daemon slurmdbd "slurmdbd pid file" running slurmdbd
}

start_slurmctld() {
    running slurmctld && return 0
    launch_slurm slurmctld -f "$SLURM_CONF_FILE"
    # timeout: a ping to something else squatting on the port would hang ~10 s per try.
    wait_daemon slurmctld "slurmctld to answer" \
        env SLURM_CONF="$SLURM_CONF_FILE" timeout 3 scontrol ping
}

start_slurmd() {
    running slurmd && return 0
    launch_slurm slurmd -f "$SLURM_CONF_FILE"
    wait_daemon slurmd "slurmd pid file" running slurmd
}

node_ready() {
    local state
    state="$(SLURM_CONF="$SLURM_CONF_FILE" sinfo -h -o %T 2>/dev/null)" || return 1
    # idle is the normal answer; mixed/allocated mean jobs saved in the state dir restarted,
    # which also proves the node works.
    [[ "$state" == idle || "$state" == mixed || "$state" == allocated ]]
}

cmd_start() {
    need_root
    state_dir create
    local t0=$SECONDS
    installed || cmd_install
    write_configs
    start_munged
    start_mariadb
    start_slurmdbd
    local ctld_was_running=0
    running slurmctld && ctld_was_running=1
    start_slurmctld
    start_slurmd
    # A start with other settings (e.g. EQPROP_SLURM_MAXTIME) on a running cluster.
    if ((ctld_was_running && SLURM_CONF_CHANGED)); then
        say "slurm.conf changed; reconfiguring the running cluster"
        SLURM_CONF="$SLURM_CONF_FILE" scontrol reconfigure || fail "scontrol reconfigure failed"
    fi
    local deadline=$((SECONDS + TIMEOUT))
    until node_ready; do
        if ((SECONDS >= deadline)); then
            SLURM_CONF="$SLURM_CONF_FILE" sinfo -N -l >&2 || true
            SLURM_CONF="$SLURM_CONF_FILE" scontrol show node >&2 || true
            fail "node not idle after ${TIMEOUT}s"
        fi
        local d
        for d in slurmctld slurmd; do
            running "$d" || fail "$d exited during startup"
            died_in_log "$d" && fail "$d died during startup"
        done
        sleep 0.2
    done
    say "cluster up in $((SECONDS - t0))s; state in $DIR"
    say "use: eval \"\$($0 env)\""
}

# stop_group NAME...: SIGTERM the named daemons together (each takes 1-2 s to exit), wait for
# all of them, SIGKILL whatever is left after 20 s.
stop_group() {
    local name pid pids=() names=()
    for name in "$@"; do
        if running "$name"; then
            pid="$(tr -dc 0-9 <"$(pidfile "$name")")"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$name")
        fi
    done
    local i deadline=$((SECONDS + 20))
    for i in "${!pids[@]}"; do
        while kill -0 "${pids[i]}" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if kill -0 "${pids[i]}" 2>/dev/null; then
            say "${names[i]} (pid ${pids[i]}) ignored SIGTERM; sending SIGKILL"
            kill -KILL "${pids[i]}" 2>/dev/null || true
        fi
        say "stopped ${names[i]}"
    done
    for name in "$@"; do
        rm -f "$(pidfile "$name")"
    done
}

cmd_stop() {
    state_dir
    # Jobs run under slurmstepd, which outlives slurmd; cancel them first so no test job keeps
    # running against a cluster that is gone.
    if running slurmctld && running slurmd; then
        export SLURM_CONF="$SLURM_CONF_FILE"
        if [[ -n "$(squeue -h -o %i 2>/dev/null)" ]]; then
            say "cancelling running jobs"
            scancel --partition=debug 2>/dev/null || true
            local deadline=$((SECONDS + 15))
            while [[ -n "$(squeue -h -o %i 2>/dev/null)" ]] && ((SECONDS < deadline)); do
                sleep 0.5
            done
        fi
    fi
    # Stop in reverse dependency order: slurmctld flushes accounting to slurmdbd on exit, which
    # needs mariadb and munge.
    stop_group slurmd slurmctld
    stop_group slurmdbd
    stop_group mariadb munged
}

cmd_status() {
    state_dir
    local d ok=0
    for d in munged mariadb slurmdbd slurmctld slurmd; do
        if running "$d"; then
            echo "$d: running (pid $(tr -dc 0-9 <"$(pidfile "$d")"))"
        else
            echo "$d: stopped"
            ok=1
        fi
    done
    if running slurmctld; then
        SLURM_CONF="$SLURM_CONF_FILE" sinfo || true
    fi
    return "$ok"
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop && cmd_start ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *)
        sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
        exit 2
        ;;
esac
