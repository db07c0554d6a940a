#!/usr/bin/env bash
# Manage a private single-node Slurm 22.05 cluster (no systemd, nothing in /etc).
#
#   scripts/slurm.sh up       start (idempotent; repairs a crashed cluster)
#   scripts/slurm.sh down     cancel all jobs, stop all daemons (idempotent)
#   scripts/slurm.sh status   exit 0 if healthy, 1 otherwise (one-line summary)
#   scripts/slurm.sh env      print the client environment file ($PREFIX/env)
#
# Environment:
#   HPCB_SLURM_PREFIX      where everything lives      [/var/tmp/hpc-broker/slurm]
#   HPCB_SLURM_ACCOUNTING  1: MariaDB + slurmdbd (sacct); 0: no accounting storage   [1]
#   HPCB_SLURM_TIMEOUT     seconds to wait for the cluster to become ready            [60]
#   HPCB_SLURM_PORT_BASE   slurmctld's port; slurmd and slurmdbd take the next two    [6817]
#   HPCB_SLURM_DB_PORT     MariaDB's port on 127.0.0.1                                [3307]
#
# Clients: `source "$PREFIX/env"` (sets SLURM_CONF) before sbatch/squeue/sacct/scontrol.
# A second cluster on the same machine needs its own prefix and ports (e.g. HPCB_SLURM_PREFIX=/var/tmp/b
# HPCB_SLURM_PORT_BASE=7817 HPCB_SLURM_DB_PORT=3317): a disruptive run (chaos restarts slurmctld) then
# leaves the default cluster alone. The partition uses OverSubscribe=FORCE:32 (up to 32 jobs share a core): meant for
# tests and local mode, not for real resource isolation.
set -euo pipefail
exec </dev/null

PREFIX=${HPCB_SLURM_PREFIX:-/var/tmp/hpc-broker/slurm}
ACCOUNTING=${HPCB_SLURM_ACCOUNTING:-1}
TIMEOUT=${HPCB_SLURM_TIMEOUT:-60}
CLUSTER=local
PARTITION=compute
DB_PORT=${HPCB_SLURM_DB_PORT:-3307}
PORT_BASE=${HPCB_SLURM_PORT_BASE:-6817}
[[ $PORT_BASE =~ ^[0-9]+$ && $DB_PORT =~ ^[0-9]+$ ]] || { echo "slurm.sh: ports must be numbers" >&2; exit 2; }
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_NAME=slurm_acct_db
DB_USER=slurm

case $ACCOUNTING in 0|1) ;; *) echo "slurm.sh: HPCB_SLURM_ACCOUNTING must be 0 or 1" >&2; exit 2 ;; esac
case $PREFIX in /*) ;; *) PREFIX=$(pwd)/$PREFIX ;; esac
PREFIX=${PREFIX%/}

ETC=$PREFIX/etc
RUN=$PREFIX/run          # our PID files (one per daemon, = $! of the foreground daemon)
LOG=$PREFIX/log
STATE=$PREFIX/state
DBDIR=$PREFIX/mariadb
SLURM_CONF_FILE=$ETC/slurm.conf
ENV_FILE=$PREFIX/env
MODE_FILE=$RUN/accounting   # accounting mode the running cluster was started with

# Unix socket paths are limited to 108 bytes: keep the sockets under the prefix when it is short,
# otherwise in a short per-prefix directory under /tmp.
if (( ${#PREFIX} <= 60 )); then
  SOCKDIR=$PREFIX/sock
else
  SOCKDIR=/tmp/hpcb-$(printf '%s' "$PREFIX" | md5sum | cut -c1-10)
fi
MUNGE_SOCK=$SOCKDIR/munge
DB_SOCK=$SOCKDIR/mariadb

export SLURM_CONF=$SLURM_CONF_FILE

ALL_DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stop order is the reverse

now() { date +%s.%N; }
T0=$(now)
elapsed() { awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "slurm.sh: $*" >&2; }

daemons_for_mode() { # $1 = 0|1
  if [[ $1 == 1 ]]; then echo munged mariadbd slurmdbd slurmctld slurmd; else echo munged slurmctld slurmd; fi
}

log_file() {
  case $1 in
    munged) echo "$LOG/munged.log" ;;
    mariadbd) echo "$LOG/mariadb.log" ;;
    *) echo "$LOG/$1.log" ;;
  esac
}

# ---- process helpers ---------------------------------------------------------------------------

# Resolved binary of each daemon (Debian installs slurmctld/slurmd as alternatives symlinks to
# slurmctld-wlm/slurmd-wlm, which is what /proc/PID/exe shows).
declare -A BIN=()
bin_of() {
  if [[ -z ${BIN[$1]:-} ]]; then
    local p; p=$(command -v "$1" 2>/dev/null || echo "/usr/sbin/$1")
    BIN[$1]=$(readlink -f "$p" 2>/dev/null || echo "$p")
  fi
  echo "${BIN[$1]}"
}
for _d in munged mariadbd slurmdbd slurmctld slurmd; do bin_of "$_d" >/dev/null; done

# proc_stat PID -> "STATE PPID" (robust to spaces in the command name)
proc_stat() { local s; s=$(<"/proc/$1/stat") || return 1; s=${s##*) }; echo "${s%% *} $(cut -d' ' -f2 <<<"$s")"; }

# alive PID NAME: PID exists, is not a zombie/dead, and runs daemon NAME's binary (guards against
# PID reuse after a crash or reboot).
alive() {
  local pid=$1 name=$2 st exe
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  st=$(proc_stat "$pid" 2>/dev/null) || return 1
  st=${st%% *}
  [[ -n $st && $st != Z && $st != X && $st != x ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ ${exe% (deleted)} == "${BIN[$name]}" ]]
}

pid_of() { # recorded PID of daemon $1 if it is alive, else nothing (and rc 1)
  local f=$RUN/$1.pid pid
  [[ -r $f ]] || return 1
  pid=$(<"$f") || return 1
  alive "$pid" "$1" || return 1
  echo "$pid"
}

# Processes of daemon $1 that belong to this prefix but are not the recorded one, e.g. left behind
# after the PID files were lost. Every daemon we start carries HPCB_SLURM_MARK=<prefix> in its
# environment, so this finds exactly ours (not another prefix's, not the system's).
strays() {
  local name=$1 f pid ppid rec
  rec=$(pid_of "$name" || true)
  for f in $(grep -lasxzF "HPCB_SLURM_MARK=$PREFIX" /proc/[0-9]*/environ 2>/dev/null || true); do
    pid=${f#/proc/}; pid=${pid%/environ}
    [[ $pid == "$rec" || $pid == "$$" ]] && continue
    alive "$pid" "$name" || continue
    # Skip helper children of a live instance (slurmctld's slurmscriptd runs the same binary).
    ppid=$(proc_stat "$pid" 2>/dev/null) || continue
    ppid=${ppid#* }
    alive "$ppid" "$name" && continue
    echo "$pid"
  done
  return 0
}

# stop_pids NAME WAIT PID...: SIGTERM, wait up to WAIT s, then SIGKILL (and wait up to 5 s more).
stop_pids() {
  local name=$1 wait=$2; shift 2
  local pids=("$@") p left deadline
  (( ${#pids[@]} )) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  deadline=$(( $(date +%s%N) + wait * 1000000000 ))
  while :; do
    left=()
    for p in "${pids[@]}"; do alive "$p" "$name" && left+=("$p"); done
    (( ${#left[@]} )) || return 0
    if (( $(date +%s%N) > deadline )); then
      log "$name (pid ${left[*]}) did not stop within ${wait}s: SIGKILL"
      kill -KILL "${left[@]}" 2>/dev/null || true
      local i
      for i in $(seq 50); do
        local still=()
        for p in "${left[@]}"; do alive "$p" "$name" && still+=("$p"); done
        (( ${#still[@]} )) || return 0
        sleep 0.1
      done
      log "$name (pid ${left[*]}) survived SIGKILL"
      return 1
    fi
    sleep 0.05
  done
}

stop_daemon() { # NAME: stop recorded and stray instances
  local name=$1 wait pids=()
  local rec; rec=$(pid_of "$name" || true)
  [[ -n $rec ]] && pids+=("$rec")
  local s; for s in $(strays "$name"); do pids+=("$s"); done
  case $name in mariadbd) wait=30 ;; slurmctld|slurmdbd) wait=15 ;; *) wait=10 ;; esac
  if (( ${#pids[@]} )); then
    stop_pids "$name" "$wait" "${pids[@]}"
  fi
  rm -f "$RUN/$name.pid"
}

# start NAME CMD...: run CMD in the foreground mode of the daemon, detached, and record its PID.
# `$!` is the PID the daemon will have, but only once `setsid` and `nohup` have exec'd it: until
# then /proc/PID/exe is bash, setsid or nohup, and `alive` would read the daemon as exited. A slow
# first exec (cold page cache right after apt-get install) made `make up` fail on a fresh machine,
# so this waits, bounded by the deadline, until the exec is done or the process has really gone.
start_daemon() {
  local name=$1; shift
  local out=$LOG/$name.out
  # fd 9 is our lock: children must not inherit it.
  HPCB_SLURM_MARK=$PREFIX setsid nohup "$@" </dev/null >>"$out" 2>&1 9>&- &
  local pid=$!
  echo "$pid" >"$RUN/$name.pid"
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until alive "$pid" "$name"; do
    exec_pending "$pid" \
      || die_with_log "$name" "$name exited at start (command: $*)"
    (( $(date +%s) < deadline )) \
      || die_with_log "$name" "$name was not exec'd within ${TIMEOUT}s (command: $*)"
    sleep 0.05
  done
}

# exec_pending PID: the process still lives but has not exec'd its daemon yet (its binary is one of
# the launchers on the way: this shell, setsid, nohup, or a wrapper script of either).
exec_pending() {
  local st
  st=$(proc_stat "$1" 2>/dev/null) || return 1
  st=${st%% *}
  [[ -n $st && $st != Z && $st != X && $st != x ]]
}

die_with_log() { # NAME MESSAGE
  local name=$1; shift
  log "ERROR: $*"
  local f
  for f in "$(log_file "$name")" "$LOG/$name.out"; do
    if [[ -s $f ]]; then
      echo "---- last lines of $f ----" >&2
      tail -n 25 "$f" >&2
    fi
  done
  exit 1
}

# wait_for NAME DESCRIPTION CMD...: poll CMD until it succeeds, the daemon dies, or the deadline.
wait_for() {
  local name=$1 what=$2; shift 2
  local pid
  while :; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    pid=$(pid_of "$name" || true)
    [[ -n $pid ]] || die_with_log "$name" "$name exited while waiting for $what"
    if (( $(date +%s) >= DEADLINE )); then
      die_with_log "$name" "timed out after ${TIMEOUT}s waiting for $what"
    fi
    sleep 0.1
  done
}

# ---- configuration -----------------------------------------------------------------------------

node_line() {
  local line
  line=$(slurmd -C 2>/dev/null | head -n1) || true
  [[ $line == NodeName=* ]] || { log "ERROR: 'slurmd -C' failed (is slurmd installed? does 'hostname -s' resolve?)"; exit 1; }
  echo "$line"
}

render_slurm_conf() { # $1 = accounting mode
  local host; host=$(hostname -s)
  cat <<EOF
# Generated by scripts/slurm.sh - do not edit (rewritten on every 'up').
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
CredType=cred/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$ETC/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
# Slurm's default (a ParallelCluster cluster's too): a sweep of more tasks is several arrays
MaxArraySize=1001
# Every array task counts (a 100,000-item sweep needs 100,000 beside the rest)
MaxJobCount=250000
MessageTimeout=30
KillWait=5
InactiveLimit=0
JobCompType=jobcomp/none
EOF
  if [[ $1 == 1 ]]; then
    cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$host
AccountingStoragePort=$DBD_PORT
# Connections to slurmdbd ignore AuthInfo: the munge socket is passed this way.
AccountingStoragePass=$MUNGE_SOCK
AccountingStoreFlags=job_comment
EOF
  else
    echo "AccountingStorageType=accounting_storage/none"
  fi
  echo "$(node_line) State=UNKNOWN"
  echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE OverSubscribe=FORCE:32 State=UP"
}

render_slurmdbd_conf() {
  local host; host=$(hostname -s)
  cat <<EOF
# Generated by scripts/slurm.sh - do not edit (rewritten on every 'up').
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$host
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$(<"$ETC/db.pass")
StorageLoc=$DB_NAME
EOF
}

write_if_changed() { # FILE MODE CONTENT -> rc 0 if changed
  local f=$1 mode=$2 content=$3
  if [[ -f $f ]] && [[ "$(<"$f")" == "$content" ]]; then chmod "$mode" "$f"; return 1; fi
  local tmp; tmp=$(mktemp "$f.XXXXXX")
  chmod "$mode" "$tmp"
  printf '%s\n' "$content" >"$tmp"
  mv -f "$tmp" "$f"
  return 0
}

prepare_dirs() {
  mkdir -p "$PREFIX" "$ETC" "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/slurmd" "$PREFIX/munge"
  chmod 755 "$PREFIX"
  # Jobs run as their callers' own users, whose sbatch/scancel/squeue read slurm.conf and
  # plugstack.conf (mode 644): etc/ is searchable by all. Its secrets stay root-only (600):
  # munge.key, db.pass, slurmdbd.conf.
  chmod 755 "$ETC"
  chmod 700 "$PREFIX/munge"
  mkdir -p "$SOCKDIR"
  chmod 755 "$SOCKDIR"   # munged refuses a socket directory that is not 755
  [[ -f $ETC/plugstack.conf ]] || : >"$ETC/plugstack.conf"
  chmod 644 "$ETC/plugstack.conf"
  if [[ ! -s $ETC/munge.key ]]; then
    rm -f "$ETC/munge.key"
    mungekey -c -k "$ETC/munge.key" >/dev/null
  fi
  chmod 600 "$ETC/munge.key"
  if [[ ! -s $ETC/db.pass ]]; then
    ( umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$ETC/db.pass" )
  fi
  chmod 600 "$ETC/db.pass"
}

write_env_file() {
  local content
  content="# Source this file to use the private Slurm cluster of hpc-broker.
export SLURM_CONF=$SLURM_CONF_FILE
export HPCB_SLURM_PREFIX=$PREFIX
export HPCB_SLURM_PORT_BASE=$PORT_BASE
export HPCB_SLURM_DB_PORT=$DB_PORT"
  write_if_changed "$ENV_FILE" 644 "$content" || true
}

# ---- health ------------------------------------------------------------------------------------

running_mode() { [[ -r $MODE_FILE ]] && cat "$MODE_FILE" || echo ""; }

any_alive() {
  local d
  for d in "${ALL_DAEMONS[@]}"; do
    pid_of "$d" >/dev/null && return 0
    [[ -n $(strays "$d") ]] && return 0
  done
  return 1
}

node_state() { timeout 10 sinfo -h -N -o '%T' 2>/dev/null | head -n1; }

node_ready() {
  local st; st=$(node_state) || return 1
  case $st in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

sacct_ready() { timeout 10 sacct -n -X -a -S now-1minutes -o jobid >/dev/null 2>&1; }

# healthy MODE: every daemon of MODE alive and sinfo answers (quietly).
healthy() {
  local mode=$1 d
  for d in $(daemons_for_mode "$mode"); do pid_of "$d" >/dev/null || return 1; done
  [[ -n $(node_state) ]]
}

# ---- actions -----------------------------------------------------------------------------------

cancel_all_jobs() {
  pid_of slurmctld >/dev/null || return 0
  local users u
  users=$(timeout 15 squeue -h -o '%u' 2>/dev/null | sort -u) || return 0
  [[ -n $users ]] || return 0
  for u in $users; do timeout 30 scancel -u "$u" 2>/dev/null || true; done
  # Wait (bounded) for running jobs to end: proctrack/linuxproc would leave them behind slurmd.
  local i
  for i in $(seq 150); do
    [[ -z $(timeout 10 squeue -h -t running,completing,configuring,suspended -o '%i' 2>/dev/null) ]] && return 0
    sleep 0.1
  done
  log "warning: some jobs were still running/completing after 15 s"
}

stop_all() {
  cancel_all_jobs
  local i
  for (( i=${#ALL_DAEMONS[@]}-1; i>=0; i-- )); do stop_daemon "${ALL_DAEMONS[i]}"; done
  rm -f "$MODE_FILE"
}

db_sql() { mariadb --no-defaults -S "$DB_SOCK" -u root --connect-timeout=5 -e "$1"; }

start_mariadb() {
  if [[ ! -f $DBDIR/.hpcb-initialized ]]; then
    rm -rf "$DBDIR"
    mkdir -p "$DBDIR"
    # A fresh accounting database gets a new cluster id: forget the one slurmctld saved, or it
    # would stop with "CLUSTER ID MISMATCH".
    rm -f "$STATE/slurmctld/clustername"
    if ! mariadb-install-db --no-defaults --datadir="$DBDIR" --user=root --skip-test-db \
         --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1; then
      log "ERROR: mariadb-install-db failed"; tail -n 25 "$LOG/mariadb-install.log" >&2; exit 1
    fi
  fi
  rm -f "$DB_SOCK" "$DB_SOCK.lock"   # no live mariadbd owns them (checked by the caller)
  start_daemon mariadbd mariadbd --no-defaults --user=root --datadir="$DBDIR" \
    --socket="$DB_SOCK" --bind-address=127.0.0.1 --port=$DB_PORT --skip-name-resolve \
    --pid-file="$STATE/mariadb.pid" --log-error="$LOG/mariadb.log" \
    --innodb-lock-wait-timeout=900 --innodb-log-file-size=64M --innodb-buffer-pool-size=512M \
    --innodb-flush-log-at-trx-commit=2 --max-connections=200
  wait_for mariadbd "MariaDB to accept connections" db_sql "SELECT 1"
  local pass; pass=$(<"$ETC/db.pass")
  local u sql="CREATE DATABASE IF NOT EXISTS $DB_NAME;"
  for u in "'$DB_USER'@'127.0.0.1'" "'$DB_USER'@'localhost'"; do
    sql+="CREATE USER IF NOT EXISTS $u IDENTIFIED BY '$pass'; ALTER USER $u IDENTIFIED BY '$pass';"
    sql+="GRANT ALL ON $DB_NAME.* TO $u;"
  done
  db_sql "$sql" || die_with_log mariadbd "could not create the accounting database/user"
  touch "$DBDIR/.hpcb-initialized"
}

cluster_registered() {
  [[ $(timeout 10 sacctmgr -n -P list cluster format=cluster 2>/dev/null) == *"$CLUSTER"* ]]
}

cmd_up() {
  local mode=$ACCOUNTING rmode; rmode=$(running_mode)
  if [[ $rmode == "$mode" ]] && healthy "$mode" && [[ -f $SLURM_CONF_FILE ]] \
     && [[ "$(<"$SLURM_CONF_FILE")" == "$(render_slurm_conf "$mode")" ]] && node_ready; then
    chmod 755 "$ETC"   # a cluster started by an older slurm.sh had it at 700
    echo "slurm.sh: already up and healthy (accounting=$mode, SLURM_CONF=$SLURM_CONF_FILE) [$(elapsed) s]"
    return 0
  fi

  prepare_dirs

  local new_conf; new_conf=$(render_slurm_conf "$mode")
  local conf_changed=0 dbd_changed=0
  write_if_changed "$SLURM_CONF_FILE" 644 "$new_conf" && conf_changed=1
  if [[ $mode == 1 ]]; then
    write_if_changed "$ETC/slurmdbd.conf" 600 "$(render_slurmdbd_conf)" && dbd_changed=1
  fi
  write_env_file

  # A different mode or configuration: restart from scratch (running jobs are cancelled).
  if any_alive && { [[ -n $rmode && $rmode != "$mode" ]] || (( conf_changed || dbd_changed )); }; then
    log "configuration or accounting mode changed (was '${rmode:-?}', now '$mode'): restarting the cluster"
    stop_all
  fi
  # Daemons of the other mode must not keep running (e.g. slurmdbd after switching to accounting=0).
  if [[ $mode == 0 ]]; then stop_daemon slurmdbd; stop_daemon mariadbd; fi
  # Kill stray instances of ours whose PID files were lost (crash, deleted run dir).
  local d s i
  for (( i=${#ALL_DAEMONS[@]}-1; i>=0; i-- )); do
    d=${ALL_DAEMONS[i]}
    mapfile -t s < <(strays "$d")
    if (( ${#s[@]} )); then log "stopping stray $d (pid ${s[*]})"; stop_pids "$d" 10 "${s[@]}" || true; fi
  done

  DEADLINE=$(( $(date +%s) + TIMEOUT ))
  echo "$mode" >"$MODE_FILE"

  # munged
  if ! pid_of munged >/dev/null; then
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    start_daemon munged munged -F --key-file="$ETC/munge.key" --socket="$MUNGE_SOCK" \
      --pid-file="$PREFIX/munge/munged.pid" --log-file="$LOG/munged.log" --seed-file="$PREFIX/munge/munged.seed"
    wait_for munged "the munge socket" test -S "$MUNGE_SOCK"
  fi

  if [[ $mode == 1 ]]; then
    pid_of mariadbd >/dev/null || start_mariadb
    if ! pid_of slurmdbd >/dev/null; then
      start_daemon slurmdbd slurmdbd -D
      wait_for slurmdbd "slurmdbd to answer" timeout 5 sacctmgr -n -P list cluster format=cluster
    fi
    if ! cluster_registered; then
      timeout 20 sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
      cluster_registered || die_with_log slurmdbd "could not register cluster '$CLUSTER' in slurmdbd"
    fi
  fi

  if ! pid_of slurmctld >/dev/null; then
    # -i: ignore errors in saved state (e.g. after a crash) instead of refusing to start.
    start_daemon slurmctld slurmctld -D -i -f "$SLURM_CONF_FILE"
  fi
  wait_for slurmctld "slurmctld to answer" timeout 5 scontrol ping
  if ! pid_of slurmd >/dev/null; then
    start_daemon slurmd slurmd -D -f "$SLURM_CONF_FILE"
  fi
  # Node registered and usable. A node left DOWN/DRAIN by an earlier crash is resumed.
  local resumed=0 st
  while ! node_ready; do
    pid_of slurmctld >/dev/null || die_with_log slurmctld "slurmctld exited while waiting for the node"
    pid_of slurmd >/dev/null || die_with_log slurmd "slurmd exited while waiting for the node to register"
    st=$(node_state || true)
    if (( ! resumed )) && [[ $st == down || $st == drained || $st == draining ]]; then
      timeout 10 scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
      resumed=1
    fi
    if (( $(date +%s) >= DEADLINE )); then
      die_with_log slurmd "timed out after ${TIMEOUT}s waiting for the node to be idle (state: ${st:-none})"
    fi
    sleep 0.1
  done
  if [[ $mode == 1 ]]; then
    wait_for slurmdbd "sacct to answer" sacct_ready
  fi
  echo "slurm.sh: up (accounting=$mode, node $(node_state)) in $(elapsed) s; clients: source $ENV_FILE"
}

cmd_down() {
  if ! any_alive; then
    rm -f "$MODE_FILE"
    echo "slurm.sh: nothing running [$(elapsed) s]"
    return 0
  fi
  stop_all
  echo "slurm.sh: down in $(elapsed) s"
}

cmd_status() {
  local mode; mode=$(running_mode)
  local d parts=() ok=1
  for d in "${ALL_DAEMONS[@]}"; do
    if pid_of "$d" >/dev/null; then parts+=("$d=up"); else
      if [[ -n $mode ]] && [[ " $(daemons_for_mode "$mode") " == *" $d "* ]]; then parts+=("$d=DOWN"); ok=0; fi
    fi
  done
  [[ -n $mode ]] || ok=0
  local st=""
  if pid_of slurmctld >/dev/null; then st=$(node_state || true); fi
  [[ -n $st ]] || ok=0
  if (( ok )); then
    echo "healthy: accounting=$mode node=$st ${parts[*]}"
    return 0
  fi
  echo "unhealthy: accounting=${mode:-none} node=${st:-unreachable} ${parts[*]:-no daemons}"
  return 1
}

cmd_env() {
  if [[ ! -f $ENV_FILE ]]; then
    mkdir -p "$PREFIX"
    write_env_file
  fi
  cat "$ENV_FILE"
}

main() {
  local cmd=${1:-}
  case $cmd in
    up|down|status|env) ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
  esac
  if [[ $cmd == status || $cmd == env ]]; then "cmd_$cmd"; return; fi
  [[ $(id -u) -eq 0 ]] || { echo "slurm.sh: $cmd must run as root" >&2; exit 1; }
  mkdir -p "$PREFIX"
  # Serialise concurrent up/down calls.
  exec 9>"$PREFIX/.lock"
  flock -w "$TIMEOUT" 9 || { log "ERROR: another slurm.sh up/down holds $PREFIX/.lock"; exit 1; }
  "cmd_$cmd"
}

# Sourced (by tests), it only defines the functions above.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
