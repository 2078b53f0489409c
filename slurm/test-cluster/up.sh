#!/usr/bin/env bash
# Bring up (or check) the one-node SLURM test cluster on this machine: packages, munge,
# MariaDB + slurmdbd (accounting), slurmctld, slurmd. Idempotent: on a cluster that is
# already up it only checks and returns in about a second; a daemon that is dead or does
# not answer is restarted by the PID in its pid file, and a changed config restarts the
# daemons that read it. Needs root, Debian 12, no systemd required.
#
#   bash slurm/test-cluster/up.sh        # UP_TIMEOUT=60 by default (seconds to come up)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
UP_TIMEOUT="${UP_TIMEOUT:-60}"
FAKE_CPUS="${SLURM_TEST_CPUS:-8}"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
export DEBIAN_FRONTEND=noninteractive

T0=$(date +%s.%N)
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "up.sh [$(elapsed "$T0") s] $*"; }
die() {
    echo "up.sh: FAILED after $(elapsed "$T0") s: $*" >&2
    for f in "${LOGS_TO_SHOW[@]:-}"; do
        [ -n "$f" ] && [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}
LOGS_TO_SHOW=()

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts system daemons)"

# ---------------------------------------------------------------- packages
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    t=$(now)
    log "installing ${missing[*]}"
    apt_install() { apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/slurm-up-apt.log 2>&1; }
    if ! apt_install; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >>/tmp/slurm-up-apt.log 2>&1 || { LOGS_TO_SHOW=(/tmp/slurm-up-apt.log); die "apt-get update failed"; }
        apt_install || { LOGS_TO_SHOW=(/tmp/slurm-up-apt.log); die "apt-get install ${missing[*]} failed"; }
    fi
    log "packages installed in $(elapsed "$t") s"
fi

# All waiting below is bounded by one deadline.
DEADLINE=$(( $(date +%s) + UP_TIMEOUT ))
left() { echo $(( DEADLINE - $(date +%s) )); }
# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s, at most SECONDS and the deadline.
wait_for() {
    local max="$1" what="$2"; shift 2
    local until=$(( $(date +%s) + max ))
    [ "$until" -gt "$DEADLINE" ] && until=$DEADLINE
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$until" ] && return 1
        sleep 0.2
    done
    log "$what"
}

# ---------------------------------------------------------------- daemons by pid file
# alive PIDFILE COMM: the pid file names a live process whose name is COMM.
alive() {
    local pid
    [ -s "$1" ] || return 1
    pid="$(tr -dc 0-9 <"$1")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}
# stop_pidfile PIDFILE COMM: TERM the process named in PIDFILE (if it is COMM), KILL after 15 s.
stop_pidfile() {
    local pid i
    if alive "$1" "$2"; then
        pid="$(tr -dc 0-9 <"$1")"
        kill "$pid" 2>/dev/null || true
        for i in $(seq 75); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
        if [ -d "/proc/$pid" ]; then log "$2 ($pid) ignored TERM; sending KILL"; kill -9 "$pid" 2>/dev/null || true; sleep 0.5; fi
    fi
    rm -f "$1"
}

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/mysqld \
    /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chown mysql:mysql /run/mysqld 2>/dev/null || true

# ---------------------------------------------------------------- configuration
# install_if_changed SRC DEST MODE: returns 0 when DEST changed.
install_if_changed() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then rm -f "$1"; return 1; fi
    install -m "$3" -o root -g root "$1" "$2"; rm -f "$1"; return 0
}
restart_munge=0; restart_dbd=0; restart_slurm=0

if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    restart_munge=1; restart_dbd=1; restart_slurm=1
    log "created /etc/munge/munge.key"
fi
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key

NODE="$(hostname -s)"
# RealMemory: 95% of what slurmd detects (a node whose RealMemory exceeds the real one drains).
MEM="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)"
[ -n "$MEM" ] || die "slurmd -C reported no RealMemory"
REALMEM=$(( MEM * 95 / 100 ))
tmp="$(mktemp)"
sed -e "s/@NODE@/$NODE/g" -e "s/@CPUS@/$FAKE_CPUS/g" -e "s/@REALMEM@/$REALMEM/g" \
    "$HERE/slurm.conf.in" >"$tmp"
install_if_changed "$tmp" /etc/slurm/slurm.conf 644 && { restart_slurm=1; log "wrote /etc/slurm/slurm.conf (node $NODE, CPUs=$FAKE_CPUS, RealMemory=$REALMEM)"; }

# The database password is made once and kept in slurmdbd.conf (mode 600, root only).
DBPASS="$(sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf 2>/dev/null || true)"
[ -n "$DBPASS" ] || DBPASS="$(head -c 18 /dev/urandom | base64 | tr -dc A-Za-z0-9)"
tmp="$(mktemp)"
sed -e "s/@DBPASS@/$DBPASS/g" "$HERE/slurmdbd.conf.in" >"$tmp"
install_if_changed "$tmp" /etc/slurm/slurmdbd.conf 600 && { restart_dbd=1; log "wrote /etc/slurm/slurmdbd.conf"; }

# ---------------------------------------------------------------- munge
MUNGE_PID=/run/munge/munged.pid
munge_ok() { munge -n | unmunge; }
if [ "$restart_munge" = 1 ] || ! alive "$MUNGE_PID" munged || ! munge_ok >/dev/null 2>&1; then
    stop_pidfile "$MUNGE_PID" munged
    runuser -u munge -- /usr/sbin/munged --force
    LOGS_TO_SHOW=(/var/log/munge/munged.log)
    wait_for 10 "munged up" munge_ok || die "munged does not answer (munge -n | unmunge)"
    restart_dbd=1; restart_slurm=1
fi

# ---------------------------------------------------------------- mariadb
MARIADB_PID=/run/mysqld/mysqld.pid
db_ok() { mariadb-admin --connect-timeout=2 ping; }
if ! alive "$MARIADB_PID" mariadbd || ! db_ok >/dev/null 2>&1; then
    stop_pidfile "$MARIADB_PID" mariadbd
    # The Debian init script (mysqld_safe); `service` does not consult policy-rc.d.
    service mariadb start >/tmp/slurm-up-mariadb.log 2>&1 || true
    LOGS_TO_SHOW=(/tmp/slurm-up-mariadb.log /var/log/mysql/error.log)
    wait_for 30 "mariadb up" db_ok || die "mariadb does not answer (mariadb-admin ping)"
fi
mariadb -u root <<SQL || die "could not create the slurm database user"
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# ---------------------------------------------------------------- slurmdbd
DBD_PID=/run/slurmdbd.pid
dbd_ok() { timeout 5 sacctmgr -n -P show cluster format=cluster; }
if [ "$restart_dbd" = 1 ] || ! alive "$DBD_PID" slurmdbd || ! dbd_ok >/dev/null 2>&1; then
    stop_pidfile "$DBD_PID" slurmdbd
    slurmdbd
    LOGS_TO_SHOW=(/var/log/slurm/slurmdbd.log)
    wait_for 30 "slurmdbd up" dbd_ok || die "slurmdbd does not answer (sacctmgr show cluster)"
fi
if ! dbd_ok 2>/dev/null | grep -qx ci; then
    sacctmgr -i add cluster ci >/dev/null || die "sacctmgr add cluster ci failed"
    log "registered cluster ci in accounting"
fi

# ---------------------------------------------------------------- slurmctld, slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
ctld_ok() { timeout 5 scontrol ping | grep -q 'is UP'; }
if [ "$restart_slurm" = 1 ] || ! alive "$CTLD_PID" slurmctld || ! ctld_ok >/dev/null 2>&1; then
    stop_pidfile "$CTLD_PID" slurmctld
    slurmctld
    LOGS_TO_SHOW=(/var/log/slurm/slurmctld.log)
    wait_for 20 "slurmctld up" ctld_ok || die "slurmctld does not answer (scontrol ping)"
fi
if [ "$restart_slurm" = 1 ] || ! alive "$SLURMD_PID" slurmd; then
    stop_pidfile "$SLURMD_PID" slurmd
    slurmd
    log "slurmd started"
fi

# ---------------------------------------------------------------- node state
LOGS_TO_SHOW=(/var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log)
node_state() { timeout 5 sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1; }
last_resume=0
wait_start=$(date +%s); slurmd_restarted=0
while :; do
    st="$(node_state || true)"
    case "$st" in
        idle|mix|alloc) break ;;
        # Drained or down while responding (a trailing * means not responding: wait for it).
        drain|drng|down|fail|failg)
            if [ $(( $(date +%s) - last_resume )) -ge 5 ]; then
                log "node $NODE is $st ($(sinfo -h -n "$NODE" -o %E)): resuming it"
                scontrol update nodename="$NODE" state=resume || true
                last_resume=$(date +%s)
            fi ;;
        # Not responding for 10 s although slurmd "runs": it is stale; restart it once.
        *'*')
            if [ "$slurmd_restarted" = 0 ] && [ $(( $(date +%s) - wait_start )) -ge 10 ]; then
                log "node $NODE is $st (not responding): restarting slurmd"
                stop_pidfile "$SLURMD_PID" slurmd; slurmd; slurmd_restarted=1
            fi ;;
    esac
    [ "$(left)" -gt 0 ] || die "node $NODE did not become idle within ${UP_TIMEOUT} s (state: '${st:-no answer}')"
    sleep 0.2
done
log "cluster up: node $NODE is $st; partitions: $(sinfo -h -o %P | tr '\n' ' ')(total $(elapsed "$T0") s)"
