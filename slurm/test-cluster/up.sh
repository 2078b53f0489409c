#!/usr/bin/env bash
# Bring up (or check) the SLURM test cluster on this machine: packages, munge,
# MariaDB + slurmdbd (accounting), slurmctld, slurmd. With `--nodes 2`, two more nodes,
# each its own network + UTS namespace (own hostname, address, slurmd, spool) on a bridge in
# the controller's namespace `sslctl`, where slurmctld, slurmdbd and the one-node `debug`
# node then run too; SLURM commands must then run inside it: `nsenter --net=/run/netns/sslctl CMD`. Idempotent: on a cluster that is
# already up it only checks and returns in about a second; a daemon that is dead or does
# not answer is restarted by the PID in its pid file, and a changed config restarts the
# daemons that read it. Needs root, Debian 12, no systemd required.
#
#   bash slurm/test-cluster/up.sh [--nodes 1|2]   # UP_TIMEOUT=60 by default (seconds to come up)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODES=1
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) NODES="${2:-}"; shift 2 || true ;;
        --nodes=*) NODES="${1#--nodes=}"; shift ;;
        *) echo "error: up.sh: unknown argument '$1' (expected --nodes 1 or --nodes 2)" >&2; exit 2 ;;
    esac
done
case "$NODES" in 1|2) ;; *) echo "error: up.sh: --nodes '$NODES': expected 1 or 2" >&2; exit 2 ;; esac
# shellcheck source=net.sh
. "$HERE/net.sh"
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

# Switching between 1 and 2 nodes moves the daemons between namespaces: start from down.
MODE_FILE=/run/sslrun-test-cluster.nodes
if [ -s "$MODE_FILE" ] && [ "$(cat "$MODE_FILE")" != "$NODES" ]; then
    log "cluster was up with $(cat "$MODE_FILE") node(s): taking it down first"
    bash "$HERE/down.sh" >/dev/null
elif [ ! -s "$MODE_FILE" ] && [ "$NODES" = 2 ] && [ -s /run/slurmctld.pid ]; then
    log "a one-node cluster runs: taking it down first"
    bash "$HERE/down.sh" >/dev/null
fi
IN=()  # how to run a daemon or client in the controller's network namespace
if [ "$NODES" = 2 ]; then
    t=$(now)
    net_up || die "could not create the namespaces and the bridge"
    hosts_add
    IN=(nsenter --net="/run/netns/$CTL_NS")
    log "namespaces $CTL_NS ${NODE_NS[*]} and bridge $BRIDGE ready in $(elapsed "$t") s"
fi
echo "$NODES" >"$MODE_FILE"

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
CTLD=localhost; MULTI=""
if [ "$NODES" = 2 ]; then
    CTLD="$NODE($CTL_ADDR)"
    for i in "${!NODE_NS[@]}"; do
        MULTI+="NodeName=${NODE_NS[$i]} NodeAddr=${NODE_ADDR[$i]} CPUs=$FAKE_CPUS RealMemory=$REALMEM State=UNKNOWN\n"
    done
    MULTI+="PartitionName=multi Nodes=$(IFS=,; echo "${NODE_NS[*]}") MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF"
fi
sed -e "s/@NODE@/$NODE/g" -e "s/@CPUS@/$FAKE_CPUS/g" -e "s/@REALMEM@/$REALMEM/g" -e "s/@CTLD@/$CTLD/g" \
    -e "s/@MULTI@/$MULTI/" "$HERE/slurm.conf.in" >"$tmp"
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
dbd_ok() { timeout 5 "${IN[@]}" sacctmgr -n -P show cluster format=cluster; }
if [ "$restart_dbd" = 1 ] || ! alive "$DBD_PID" slurmdbd || ! dbd_ok >/dev/null 2>&1; then
    stop_pidfile "$DBD_PID" slurmdbd
    "${IN[@]}" slurmdbd
    LOGS_TO_SHOW=(/var/log/slurm/slurmdbd.log)
    wait_for 30 "slurmdbd up" dbd_ok || die "slurmdbd does not answer (sacctmgr show cluster)"
fi
if ! dbd_ok 2>/dev/null | grep -qx ci; then
    "${IN[@]}" sacctmgr -i add cluster ci >/dev/null || die "sacctmgr add cluster ci failed"
    log "registered cluster ci in accounting"
fi

# ---------------------------------------------------------------- slurmctld, slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd-$NODE.pid
stop_pidfile /run/slurmd.pid slurmd  # the pid file of an older up.sh
ctld_ok() { timeout 5 "${IN[@]}" scontrol ping | grep -q 'is UP'; }
if [ "$restart_slurm" = 1 ] || ! alive "$CTLD_PID" slurmctld || ! ctld_ok >/dev/null 2>&1; then
    stop_pidfile "$CTLD_PID" slurmctld
    "${IN[@]}" slurmctld
    LOGS_TO_SHOW=(/var/log/slurm/slurmctld.log)
    wait_for 20 "slurmctld up" ctld_ok || die "slurmctld does not answer (scontrol ping)"
fi
if [ "$restart_slurm" = 1 ] || ! alive "$SLURMD_PID" slurmd; then
    stop_pidfile "$SLURMD_PID" slurmd
    "${IN[@]}" slurmd
    log "slurmd started (node $NODE)"
fi
# start_node_slurmd NAME: a slurmd in the node's own network and UTS namespace (hostname NAME).
# nsenter, not `ip netns exec`: that remounts /sys, and slurmd then finds no /sys/fs/cgroup.
start_node_slurmd() {
    mkdir -p "/var/spool/slurmd/$1"
    nsenter --net="/run/netns/$1" unshare -u sh -c "hostname $1 && exec slurmd"
}
if [ "$NODES" = 2 ]; then
    for n in "${NODE_NS[@]}"; do
        if [ "$restart_slurm" = 1 ] || ! alive "/run/slurmd-$n.pid" slurmd; then
            stop_pidfile "/run/slurmd-$n.pid" slurmd
            start_node_slurmd "$n"
            log "slurmd started (node $n, namespace $n)"
        fi
    done
fi

# ---------------------------------------------------------------- node state
LOGS_TO_SHOW=(/var/log/slurm/slurmctld.log "/var/log/slurm/slurmd-$NODE.log")
ALL_NODES=("$NODE")
[ "$NODES" = 2 ] && ALL_NODES+=("${NODE_NS[@]}") && LOGS_TO_SHOW+=("/var/log/slurm/slurmd-${NODE_NS[0]}.log")
node_state() { timeout 5 "${IN[@]}" sinfo -h -n "$1" -o %t 2>/dev/null | head -n1; }
# restart_slurmd NAME: the node's slurmd, by its pid file, in its namespace.
restart_slurmd() {
    stop_pidfile "/run/slurmd-$1.pid" slurmd
    if [ "$1" = "$NODE" ]; then "${IN[@]}" slurmd; else start_node_slurmd "$1"; fi
}
wait_start=$(date +%s)
for n in "${ALL_NODES[@]}"; do
    last_resume=0; slurmd_restarted=0
    while :; do
        st="$(node_state "$n" || true)"
        case "$st" in
            idle|mix|alloc) break ;;
            # Drained or down while responding (a trailing * means not responding: wait for it).
            drain|drng|down|fail|failg)
                if [ $(( $(date +%s) - last_resume )) -ge 5 ]; then
                    log "node $n is $st ($("${IN[@]}" sinfo -h -n "$n" -o %E)): resuming it"
                    "${IN[@]}" scontrol update nodename="$n" state=resume || true
                    last_resume=$(date +%s)
                fi ;;
            # Not responding for 10 s although slurmd "runs": it is stale; restart it once.
            *'*')
                if [ "$slurmd_restarted" = 0 ] && [ $(( $(date +%s) - wait_start )) -ge 10 ]; then
                    log "node $n is $st (not responding): restarting its slurmd"
                    restart_slurmd "$n"; slurmd_restarted=1
                fi ;;
        esac
        [ "$(left)" -gt 0 ] || die "node $n did not become idle within ${UP_TIMEOUT} s (state: '${st:-no answer}')"
        sleep 0.2
    done
done
log "cluster up: nodes ${ALL_NODES[*]} are up; partitions: $("${IN[@]}" sinfo -h -o %P | tr '\n' ' ')(total $(elapsed "$T0") s)"
[ "$NODES" = 2 ] && log "SLURM commands and tests run inside the controller's namespace: nsenter --net=/run/netns/$CTL_NS CMD"
exit 0
