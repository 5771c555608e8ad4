#!/usr/bin/env bash
# Make N "hosts" on this machine as network namespaces on a private bridge, run commands in them, tear them down.
#
#   scripts/netns_hosts.sh up [N] [--name P] [--subnet A.B.C]   # as root; default N=2, P=afh, subnet 10.213.0
#   scripts/netns_hosts.sh exec HOST CMD [ARGS...]             # HOST = index (0, 1, ...) or host name
#   scripts/netns_hosts.sh ssh [--name P] [-x] HOST 'CMD'    # the same, ssh-style; /run/asyncflow-netns/P/ssh
#                                                              # wraps it for hydra's -launcher-exec
#   scripts/netns_hosts.sh status [--name P]                   # hosts, addresses, interface byte counters
#   scripts/netns_hosts.sh down [--name P]                     # kills what runs in them, removes everything
#
# Host i is the network namespace P-h<i> with host name P-h<i> and address A.B.C.<i+1>/24 on its
# interface eth0, a veth pair whose other end is on the bridge P-br in the root namespace. The bridge
# has no address and the namespaces have no default route: traffic only flows between the hosts (and
# each host's own loopback). `exec` runs the command in the host's network namespace, in a fresh
# UTS namespace whose host name is the host's (so MPI, Slurm and torch see distinct nodes) and in a
# private mount namespace where /etc/netns/P-h<i>/hosts is bind-mounted over /etc/hosts.
# State: /run/asyncflow-netns/P/hosts ("name address" lines); the name defaults to $ASYNCFLOW_NETNS.
set -euo pipefail

STATE_ROOT=/run/asyncflow-netns
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
say() { echo "[netns_hosts] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (ip netns add needs CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    command -v ip >/dev/null || die "no 'ip': apt-get install -y --no-install-recommends iproute2"
    command -v unshare >/dev/null && command -v nsenter >/dev/null || die "no unshare/nsenter: apt-get install -y util-linux"
}

hosts_file() { echo "$STATE_ROOT/$1/hosts"; }

up() {
    local n=2 name="${ASYNCFLOW_NETNS:-afh}" subnet=10.213.0
    [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]] && { n="$1"; shift; }
    while [ $# -gt 0 ]; do
        case "$1" in
            --name) name="$2"; shift 2 ;;
            --subnet) subnet="$2"; shift 2 ;;
            *) die "unknown option $1 (up [N] [--name P] [--subnet A.B.C])" ;;
        esac
    done
    need_root
    [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "N must be 1..200, got $n"
    [ ${#name} -le 8 ] || die "--name must be at most 8 characters (interface names are limited to 15)"
    [[ "$subnet" =~ ^(10|192\.168|172\.(1[6-9]|2[0-9]|3[01]))\.[0-9.]+$ ]] \
        || die "--subnet must be a private range (10.x.y, 172.16-31.y, 192.168.y), got $subnet"
    [ -e "$(hosts_file "$name")" ] && die "hosts '$name' already exist: $0 down --name $name first"
    mkdir -p "$STATE_ROOT/$name"
    trap 'say "failed: tearing down"; down --name "$name" >/dev/null 2>&1 || true' ERR
    local br="$name-br" i ns addr hosts_lines="127.0.0.1 localhost"$'\n'
    for i in $(seq 0 $((n - 1))); do hosts_lines+="$subnet.$((i + 1)) $name-h$i"$'\n'; done
    ip link add "$br" type bridge
    ip link set "$br" up
    # The root namespace has no address on the bridge; without this route a stray connection from it
    # to a test host would leave through the default gateway. Blackhole the test subnet here instead.
    mkdir -p "$STATE_ROOT/$name"
    ip route replace blackhole "$subnet.0/24"
    echo "$subnet" >"$STATE_ROOT/$name/subnet"
    for i in $(seq 0 $((n - 1))); do
        ns="$name-h$i"; addr="$subnet.$((i + 1))"
        ip netns add "$ns"
        mkdir -p "/etc/netns/$ns"
        printf '%s' "$hosts_lines" >"/etc/netns/$ns/hosts"
        ip link add "${name}v$i" type veth peer name "${name}p$i"
        ip link set "${name}p$i" netns "$ns"
        ip -n "$ns" link set "${name}p$i" name eth0
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
        ip link set "${name}v$i" master "$br"
        ip link set "${name}v$i" up
        echo "$ns $addr" >>"$(hosts_file "$name")"
    done
    # hydra's -launcher-exec takes one program: an ssh stand-in bound to these hosts.
    printf '#!/bin/sh\nexec "%s" ssh --name "%s" "$@"\n' "$SELF" "$name" >"$STATE_ROOT/$name/ssh"
    chmod +x "$STATE_ROOT/$name/ssh"
    trap - ERR
    # The bridge forwards once its ports are up: wait until host 0 reaches the last host
    # ("connection refused" from port 9 means the packet got there and back).
    local last="$subnet.$n" _ err
    for _ in $(seq 100); do
        err="$(ip netns exec "$name-h0" timeout 1 bash -c "exec 3<>/dev/tcp/$last/9" 2>&1 || true)"
        case "$err" in *refused*|"") break ;; esac
        sleep 0.05
    done
    say "up: $n hosts ($(tr '\n' ' ' <"$(hosts_file "$name")")) on bridge $br"
    echo "$(hosts_file "$name")"
}

# resolve NAME HOST -> "ns addr" of the host (index, namespace/host name or address)
resolve() {
    local f; f="$(hosts_file "$1")"
    [ -f "$f" ] || die "no hosts '$1' (run: $0 up --name $1)"
    if [[ "$2" =~ ^[0-9]+$ ]]; then sed -n "$(($2 + 1))p" "$f"; else awk -v h="$2" '$1==h || $2==h' "$f"; fi
}

exec_in() {
    local name="${ASYNCFLOW_NETNS:-afh}" line ns
    [ "${1:-}" = --name ] && { name="$2"; shift 2; }
    [ $# -ge 2 ] || die "usage: $0 exec HOST CMD [ARGS...]"
    line="$(resolve "$name" "$1")"; shift
    [ -n "$line" ] || die "no such host in '$name'"
    ns="${line%% *}"
    # The host's network namespace, plus a fresh UTS namespace (the host name is the host's, so ranks
    # see distinct nodes) and a private mount namespace where /etc/hosts names every host. Not
    # `ip netns exec`: it remounts /sys, which hides /sys/fs/cgroup from slurmd.
    exec nsenter --net="/run/netns/$ns" unshare --uts --mount -- \
        sh -c 'mount --bind "/etc/netns/$0/hosts" /etc/hosts && hostname "$0" && exec "$@"' "$ns" "$@"
}

ssh_like() {
    # hydra calls: LAUNCHER [-x] HOST "command line"; also accepts -o/-p style options and ignores them.
    local name="${ASYNCFLOW_NETNS:-afh}"
    [ "${1:-}" = --name ] && { name="$2"; shift 2; }
    while [ $# -gt 0 ]; do
        case "$1" in
            -x|-q|-T|-n) shift ;;
            -o|-p|-l) shift 2 ;;
            *) break ;;
        esac
    done
    local host="$1"; shift
    exec_in --name "$name" "$host" sh -c "$*"
}

status() {
    local name="${ASYNCFLOW_NETNS:-afh}" ns addr
    [ "${1:-}" = --name ] && name="$2"
    [ -f "$(hosts_file "$name")" ] || { say "no hosts '$name'"; return 1; }
    while read -r ns addr; do
        echo "$ns $addr rx_bytes=$(ip netns exec "$ns" cat /sys/class/net/eth0/statistics/rx_bytes)" \
             "tx_bytes=$(ip netns exec "$ns" cat /sys/class/net/eth0/statistics/tx_bytes)"
    done <"$(hosts_file "$name")"
}

down() {
    local name="${ASYNCFLOW_NETNS:-afh}" ns pids i
    [ "${1:-}" = --name ] && name="$2"
    need_root
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$name-h[0-9]+$" || true); do
        pids="$(ip netns pids "$ns" 2>/dev/null || true)"
        if [ -n "$pids" ]; then
            # shellcheck disable=SC2086
            kill -TERM $pids 2>/dev/null || true
            for i in $(seq 20); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
            pids="$(ip netns pids "$ns" 2>/dev/null || true)"
            # shellcheck disable=SC2086
            [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
        fi
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
    for i in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^${name}v[0-9]+$" || true); do
        ip link del "$i" 2>/dev/null || true
    done
    ip link del "$name-br" 2>/dev/null || true
    if [ -f "$STATE_ROOT/$name/subnet" ]; then
        ip route del blackhole "$(cat "$STATE_ROOT/$name/subnet").0/24" 2>/dev/null || true
    fi
    rm -rf "${STATE_ROOT:?}/$name"
    say "down: $name"
}

cmd="${1:-}"; shift || true
case "$cmd" in
    up) up "$@" ;;
    exec) exec_in "$@" ;;
    ssh) ssh_like "$@" ;;
    status) status "$@" ;;
    down) down "$@" ;;
    *) sed -n '2,17p' "$SELF" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
