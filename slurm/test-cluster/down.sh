#!/usr/bin/env bash
# Stop the SLURM test cluster started by up.sh: each daemon by the PID in its pid file (never
# by name), in reverse start order; then what `up.sh --nodes 2` made: the node and controller
# namespaces (with their veth pairs and bridge) and the node lines in /etc/hosts. Packages,
# configs, the munge key, the accounting database and SLURM's saved state stay; `up.sh` brings
# it all back. Safe to run on a cluster that is already down.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "down.sh: must run as root" >&2; exit 1; }

# stop PIDFILE COMM: TERM the process named in PIDFILE if its name is COMM; KILL after 15 s.
stop() {
    local pid i
    if [ -s "$1" ]; then
        pid="$(tr -dc 0-9 <"$1")"
        if [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]; then
            kill "$pid" 2>/dev/null || true
            for i in $(seq 75); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
            if [ -d "/proc/$pid" ]; then
                echo "down.sh: $2 ($pid) ignored TERM; sending KILL"
                kill -9 "$pid" 2>/dev/null || true
            fi
            echo "down.sh: stopped $2 ($pid)"
        else
            echo "down.sh: $2 not running (stale $1)"
        fi
        rm -f "$1"
    else
        echo "down.sh: $2 not running (no $1)"
    fi
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=net.sh
. "$HERE/net.sh"

for f in /run/slurmd-*.pid /run/slurmd.pid; do
    [ -e "$f" ] && stop "$f" slurmd
done
stop /run/slurmctld.pid slurmctld
stop /run/slurmdbd.pid slurmdbd
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged
net_down
hosts_remove
rm -f /run/sslrun-test-cluster.nodes
