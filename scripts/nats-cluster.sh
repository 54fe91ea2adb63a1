#!/usr/bin/env bash
# A private NATS cluster with JetStream on loopback: N nats-server processes (3 by
# default) routed to each other, each with its own JetStream store, for running
# several replicas of the services (or trying fail-over) on one machine.
#
#   scripts/nats-cluster.sh start    start the nodes (those not running yet), wait
#                                    until the cluster has formed, print the URLs
#   scripts/nats-cluster.sh run      start, then stay in the foreground; Ctrl-C stops
#   scripts/nats-cluster.sh urls     print the client URLs, comma-separated: the
#                                    value of KAA_NATS_URL for scripts/stack-nats.sh,
#                                    or the entries of a service's `nats.urls`
#   scripts/nats-cluster.sh status   which nodes run (exit 0 only when all do)
#   scripts/nats-cluster.sh kill N   SIGKILL node N (0-based), to try fail-over
#   scripts/nats-cluster.sh stop     SIGTERM exactly the PIDs `start` recorded
#
# Environment (defaults in brackets):
#   KAA_NATS_CLUSTER_DIR        data dir: JetStream stores n<i>/, logs n<i>.log,
#                               PID files n<i>.pid   [${TMPDIR:-/tmp}/kaa-nats-cluster-$UID]
#   KAA_NATS_CLUSTER_BASE_PORT  node i listens for clients on BASE+i, for routes on
#                               BASE+100+i, for HTTP monitoring on BASE+200+i  [14222]
#   KAA_NATS_CLUSTER_SIZE       number of nodes                             [3]
#   KAA_NATS_CLUSTER_NAME       cluster name                                [kaa]
#   NATS_SERVER                 the nats-server binary      [nats-server on PATH, /usr/sbin]
#
# The default ports (14222-14224, 14322-14324, 14422-14424) stay clear of a NATS
# server on the usual 4222/6222/8222. Everything listens on 127.0.0.1 only, without
# authentication: for local use. `stop` only signals a recorded PID whose command line
# is still nats-server with this data dir, so a recycled PID is never hit.
#
# Example: three nodes, then the stack on them (its services get all three URLs and
# fail over when one node dies):
#
#   scripts/nats-cluster.sh start
#   KAA_NATS_URL="$(scripts/nats-cluster.sh urls)" scripts/stack-nats.sh start
#   scripts/nats-cluster.sh kill 0; sleep 5; scripts/nats-cluster.sh start
set -euo pipefail

DIR="${KAA_NATS_CLUSTER_DIR:-${TMPDIR:-/tmp}/kaa-nats-cluster-$UID}"
BASE="${KAA_NATS_CLUSTER_BASE_PORT:-14222}"
SIZE="${KAA_NATS_CLUSTER_SIZE:-3}"
NAME="${KAA_NATS_CLUSTER_NAME:-kaa}"

die() { echo "nats-cluster: $*" >&2; exit 1; }

[[ "$BASE" =~ ^[0-9]+$ ]] && (( BASE > 0 && BASE + 200 + SIZE < 65536 )) || die "bad KAA_NATS_CLUSTER_BASE_PORT $BASE"
[[ "$SIZE" =~ ^[0-9]+$ ]] && (( SIZE >= 1 && SIZE <= 99 )) || die "bad KAA_NATS_CLUSTER_SIZE $SIZE"

server_binary() {
    if [[ -n "${NATS_SERVER:-}" ]]; then
        [[ -x "$NATS_SERVER" ]] || die "NATS_SERVER=$NATS_SERVER is not executable"
        echo "$NATS_SERVER"
    elif command -v nats-server >/dev/null 2>&1; then
        command -v nats-server
    elif [[ -x /usr/sbin/nats-server ]]; then
        echo /usr/sbin/nats-server
    else
        die "nats-server not found (install it, or set NATS_SERVER)"
    fi
}

client_port() { echo $((BASE + $1)); }
route_port() { echo $((BASE + 100 + $1)); }
http_port() { echo $((BASE + 200 + $1)); }

urls() {
    local i out=()
    for ((i = 0; i < SIZE; i++)); do out+=("nats://127.0.0.1:$(client_port "$i")"); done
    (IFS=,; echo "${out[*]}")
}

# The PID of node $1 if it runs (recorded by `start`, still nats-server with our dir).
node_pid() {
    local pidfile="$DIR/n$1.pid" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "nats-server.*--sd $DIR/n$1 " || return 1
    echo "$pid"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_node() {
    local i="$1" binary="$2" routes="" j
    for ((j = 0; j < SIZE; j++)); do routes+="${routes:+,}nats://127.0.0.1:$(route_port "$j")"; done
    for port in "$(client_port "$i")" "$(route_port "$i")" "$(http_port "$i")"; do
        port_taken "$port" && die "port $port (node n$i) is taken by another process; set KAA_NATS_CLUSTER_BASE_PORT"
    done
    mkdir -p "$DIR/n$i"
    # setsid: the node outlives this shell and a Ctrl-C of the terminal that started it.
    setsid "$binary" -a 127.0.0.1 -p "$(client_port "$i")" -m "$(http_port "$i")" \
        --server_name "n$i" --cluster "nats://127.0.0.1:$(route_port "$i")" \
        --cluster_name "$NAME" --routes "$routes" -js --sd "$DIR/n$i" \
        </dev/null >>"$DIR/n$i.log" 2>&1 &
    echo $! >"$DIR/n$i.pid"
}

# Waits until every node has routes to all others and JetStream has a leader.
wait_formed() {
    local deadline=$((SECONDS + 30)) i ok
    while ((SECONDS < deadline)); do
        ok=1
        for ((i = 0; i < SIZE; i++)); do
            node_pid "$i" >/dev/null || die "node n$i exited during start-up (log: $DIR/n$i.log)"
            if command -v curl >/dev/null 2>&1; then
                curl -s -m 1 "http://127.0.0.1:$(http_port "$i")/routez" | grep -q "\"num_routes\": $((SIZE - 1))" || ok=0
                curl -s -m 1 "http://127.0.0.1:$(http_port "$i")/jsz" | grep -q '"leader": "n' || ok=0
            else
                port_taken "$(client_port "$i")" || ok=0
            fi
        done
        ((ok)) && return 0
        sleep 0.2
    done
    die "the cluster did not form within 30 s (logs: $DIR/n*.log)"
}

cmd_start() {
    local binary i started=0
    binary="$(server_binary)"
    mkdir -p "$DIR"
    for ((i = 0; i < SIZE; i++)); do
        if ! node_pid "$i" >/dev/null; then
            start_node "$i" "$binary"
            started=$((started + 1))
        fi
    done
    wait_formed
    echo "nats-cluster: $SIZE nodes running ($started started now), data in $DIR" >&2
    urls
}

cmd_stop() {
    local i pid stopped=0
    for ((i = 0; i < SIZE; i++)); do
        if pid="$(node_pid "$i")"; then
            kill -TERM "$pid"
            stopped=$((stopped + 1))
        fi
        rm -f "$DIR/n$i.pid"
    done
    echo "nats-cluster: stopped $stopped node(s); data kept in $DIR" >&2
}

cmd_status() {
    local i pid all=0
    for ((i = 0; i < SIZE; i++)); do
        if pid="$(node_pid "$i")"; then
            echo "n$i  running  pid $pid  nats://127.0.0.1:$(client_port "$i")  http://127.0.0.1:$(http_port "$i")"
        else
            echo "n$i  stopped"
            all=1
        fi
    done
    return "$all"
}

cmd_kill() {
    local i="${1:-}" pid
    [[ "$i" =~ ^[0-9]+$ ]] && ((i < SIZE)) || die "usage: $0 kill <node 0..$((SIZE - 1))>"
    pid="$(node_pid "$i")" || die "node n$i is not running"
    kill -KILL "$pid"
    echo "nats-cluster: killed n$i (pid $pid); 'start' brings it back" >&2
}

case "${1:-}" in
    start) cmd_start ;;
    run)
        cmd_start
        trap 'cmd_stop; exit 0' INT TERM
        echo "nats-cluster: Ctrl-C stops the cluster" >&2
        while sleep 1; do :; done
        ;;
    urls) urls ;;
    status) cmd_status ;;
    kill) cmd_kill "${2:-}" ;;
    stop) cmd_stop ;;
    *) die "usage: $0 start|run|urls|status|kill N|stop" ;;
esac
