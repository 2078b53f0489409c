# The network of `up.sh --nodes 2`, sourced by up.sh and down.sh: one namespace for the
# controller holding a bridge, one network + UTS namespace per node, a veth pair from each node
# into the bridge. Addresses come from 192.0.2.0/24 (documentation range) and exist only inside
# these namespaces: the machine's own network is never touched (here it uses 192.0.2.0/24 too,
# so an address on the host side would collide with its gateway).
CTL_NS=sslctl
CTL_ADDR=192.0.2.10
BRIDGE=sslbr0
NODE_NS=(sslnode1 sslnode2)
NODE_ADDR=(192.0.2.11 192.0.2.12)
HOSTS_MARK="# sslrun-test-cluster"

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

net_up() {
    ns_exists "$CTL_NS" || ip netns add "$CTL_NS"
    ip -n "$CTL_NS" link set lo up
    ip -n "$CTL_NS" link show "$BRIDGE" >/dev/null 2>&1 || ip -n "$CTL_NS" link add "$BRIDGE" type bridge
    ip -n "$CTL_NS" addr replace "$CTL_ADDR/24" dev "$BRIDGE"
    ip -n "$CTL_NS" link set "$BRIDGE" up
    local i ns
    for i in "${!NODE_NS[@]}"; do
        ns="${NODE_NS[$i]}"
        ns_exists "$ns" || ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$CTL_NS" link show "v$ns" >/dev/null 2>&1 ||
            ip -n "$CTL_NS" link add "v$ns" type veth peer name eth0 netns "$ns"
        ip -n "$CTL_NS" link set "v$ns" master "$BRIDGE"
        ip -n "$CTL_NS" link set "v$ns" up
        ip -n "$ns" addr replace "${NODE_ADDR[$i]}/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
}

# Deleting a namespace deletes the links in it (the veth pairs and the bridge).
net_down() {
    local ns
    for ns in "${NODE_NS[@]}" "$CTL_NS"; do
        if ns_exists "$ns"; then ip netns del "$ns" && echo "down.sh: removed namespace $ns"; fi
    done
}

# /etc/hosts may be a bind mount: rewrite it in place (cat >), never replace the file.
hosts_remove() {
    grep -qF "$HOSTS_MARK" /etc/hosts || return 0
    local kept; kept="$(grep -vF "$HOSTS_MARK" /etc/hosts)"
    printf '%s\n' "$kept" >/etc/hosts
    echo "down.sh: removed the test nodes from /etc/hosts"
}

hosts_add() {
    local i want=""
    for i in "${!NODE_NS[@]}"; do want+="${NODE_ADDR[$i]} ${NODE_NS[$i]} $HOSTS_MARK"$'\n'; done
    want+="$CTL_ADDR $CTL_NS $HOSTS_MARK"$'\n'
    [ "$(grep -F "$HOSTS_MARK" /etc/hosts || true)"$'\n' = "$want" ] && return 0
    hosts_remove >/dev/null
    printf '%s' "$want" >>/etc/hosts
}
