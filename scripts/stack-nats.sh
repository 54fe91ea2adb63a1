#!/usr/bin/env bash
# Runs ECR, CMX and KPC as three separate processes on an existing NATS server and
# PostgreSQL server.
#
#   scripts/stack-nats.sh start    build the binaries, write configs, start the three
#   scripts/stack-nats.sh status   which of the three run (and their /health)
#   scripts/stack-nats.sh stop     SIGTERM exactly the PIDs `start` recorded
#
# It never starts or stops NATS or PostgreSQL: when one is unreachable, `start` fails
# with a message naming it. It creates the PostgreSQL database when it is missing.
#
# Environment (defaults in brackets):
#   KAA_NATS_URL      NATS server, or several servers of one cluster separated
#                     by commas (scripts/nats-cluster.sh urls)  [nats://127.0.0.1:4222]
#   KAA_PG_URL        ECR store                         [postgres://postgres@127.0.0.1:5432/$KAA_PG_DB]
#   KAA_PG_DB         database name when KAA_PG_URL is unset            [kaa]
#   KAA_RUN_DIR       state dir: configs, logs, PID files               [./kaa-run]
#   KAA_HTTP_LISTEN   ECR REST API (/api/v1)                            [127.0.0.1:8080]
#   KAA_MQTT_LISTEN   KPC MQTT listener                                 [127.0.0.1:1884]
#   KAA_CMX_HTTP      CMX /health, /metrics                             [127.0.0.1:8081]
#   KAA_KPC_HTTP      KPC /health, /metrics                             [127.0.0.1:8082]
#   KAA_BIN_DIR       where ecr, cmx, kpc are; set it to skip `cargo build`
#                     [${CARGO_TARGET_DIR:-target}/debug, built first]
#   KAA_REPLICAS      replicas of each service, 1-9                     [1]
#   KAA_ECR_REPLICAS, KAA_CMX_REPLICAS, KAA_KPC_REPLICAS
#                     replicas of one service, 1-9, e.g. 3 KPC replicas
#                     for 50,000 devices with one ECR and one CMX     [KAA_REPLICAS]
#   KAA_KPC_MAX_CONNECTIONS  MQTT sessions each KPC replica takes (a process
#                     here may hold 20,000 open files)                  [10000]
#
# With KAA_REPLICAS=N > 1, replica i (2..N) of each service is `<service>-i`
# (files `<service>-i.yaml`, `.log`, `.out`, `.pid`, replica ID `<service>-i`) and
# listens on the ports above plus 100*(i-1) (KPC's MQTT port plus i-1): e.g. the
# second ECR serves its REST API on 127.0.0.1:8180 and the second KPC takes MQTT
# on 127.0.0.1:1885. All replicas of a service share its instance name, the NATS
# servers and, for ECR, the PostgreSQL database; the CMX replicas run with
# `cmx.replicas.enabled: true` (membership in JetStream: NATS needs -js).
#
# Local-use settings: no REST authentication, no MQTT password, and every MQTT
# endpoint token is its own endpoint ID (kpc.accept-any-token). Edit the generated
# YAML in $KAA_RUN_DIR and start again for anything else.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NATS_URL="${KAA_NATS_URL:-nats://127.0.0.1:4222}"
# The YAML list of `nats.urls`: every comma-separated URL.
NATS_URLS_YAML="\"${NATS_URL//,/\", \"}\""
PG_DB="${KAA_PG_DB:-kaa}"
PG_URL="${KAA_PG_URL:-postgres://postgres@127.0.0.1:5432/$PG_DB}"
RUN_DIR="${KAA_RUN_DIR:-./kaa-run}"
HTTP_LISTEN="${KAA_HTTP_LISTEN:-127.0.0.1:8080}"
MQTT_LISTEN="${KAA_MQTT_LISTEN:-127.0.0.1:1884}"
CMX_HTTP="${KAA_CMX_HTTP:-127.0.0.1:8081}"
KPC_HTTP="${KAA_KPC_HTTP:-127.0.0.1:8082}"
REPLICAS="${KAA_REPLICAS:-1}"
KPC_MAX_CONNECTIONS="${KAA_KPC_MAX_CONNECTIONS:-10000}"
[[ "$KPC_MAX_CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || { echo "stack-nats: KAA_KPC_MAX_CONNECTIONS must be a positive number, not '$KPC_MAX_CONNECTIONS'" >&2; exit 2; }
[[ "$REPLICAS" =~ ^[1-9]$ ]] || { echo "stack-nats: KAA_REPLICAS must be 1-9, not '$REPLICAS'" >&2; exit 2; }
SERVICES=(ecr cmx kpc)
declare -A SERVICE_REPLICAS=(
    [ecr]="${KAA_ECR_REPLICAS:-$REPLICAS}"
    [cmx]="${KAA_CMX_REPLICAS:-$REPLICAS}"
    [kpc]="${KAA_KPC_REPLICAS:-$REPLICAS}"
)
for s in "${SERVICES[@]}"; do
    [[ "${SERVICE_REPLICAS[$s]}" =~ ^[1-9]$ ]] || { echo "stack-nats: KAA_${s^^}_REPLICAS must be 1-9, not '${SERVICE_REPLICAS[$s]}'" >&2; exit 2; }
done
# Every process: the service name for replica 1, `<service>-i` for replica i.
UNITS=()
for s in "${SERVICES[@]}"; do
    for i in $(seq 1 "${SERVICE_REPLICAS[$s]}"); do
        if [[ $i -eq 1 ]]; then UNITS+=("$s"); else UNITS+=("$s-$i"); fi
    done
done

die() { echo "stack-nats: $*" >&2; exit 1; }

# host:port of a URL like scheme://[user[:pw]@]host[:port][/path], with a default port.
host_port() {
    local rest="${1#*://}"
    rest="${rest%%/*}"
    rest="${rest##*@}"
    case "$rest" in
        *:*) echo "$rest" ;;
        *) echo "$rest:$2" ;;
    esac
}

reachable() { # host:port
    local hp="$1"
    timeout 2 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp##*:}" 2>/dev/null
}

# host:port plus `delta` on the port.
port_plus() { # host:port delta
    local host="${1%:*}" port="${1##*:}"
    echo "$host:$((port + $2))"
}

# The replica number of a unit (`ecr` → 1, `ecr-2` → 2) and its binary.
unit_index() { [[ "$1" == *-* ]] && echo "${1##*-}" || echo 1; }
unit_binary() { echo "${1%%-*}"; }

# A unit's address: http (REST or /health) or mqtt.
unit_addr() { # unit kind
    local unit="$1" i base
    i="$(unit_index "$unit")"
    case "$(unit_binary "$unit"):$2" in
        ecr:http) base="$HTTP_LISTEN" ;;
        cmx:http) base="$CMX_HTTP" ;;
        kpc:http) base="$KPC_HTTP" ;;
        kpc:mqtt) port_plus "$MQTT_LISTEN" $((i - 1)); return ;;
    esac
    port_plus "$base" $((100 * (i - 1)))
}

# The PID recorded for a unit if that process still runs the binary we started.
owned_pid() {
    local name="$1" pidfile="$RUN_DIR/$1.pid" pid bin
    bin="$(unit_binary "$name")"
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    # Same binary name and our config file: never signal a recycled PID.
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$bin.*$RUN_DIR_ABS/$name.yaml" || return 1
    echo "$pid"
}

write_configs() {
    local unit i
    for unit in "${UNITS[@]}"; do
        i="$(unit_index "$unit")"
        case "$(unit_binary "$unit")" in
            ecr) cat >"$RUN_DIR/$unit.yaml" <<YAML
# Generated by scripts/stack-nats.sh
service:
  instance:
    name: ecr
    replica:
      id: ecr-$i
nats:
  urls: [$NATS_URLS_YAML]
ecr:
  http:
    listen: "$(unit_addr "$unit" http)"
  store:
    url: "$PG_URL"
  cmx:
    service-instance-name: cmx
auth:
  enabled: false
YAML
            ;;
            cmx) cat >"$RUN_DIR/$unit.yaml" <<YAML
# Generated by scripts/stack-nats.sh
service:
  instance:
    name: cmx
    replica:
      id: cmx-$i
nats:
  urls: [$NATS_URLS_YAML]
kaa:
  cmx:
    configuration-data-provider:
      service-instance:
        name: ecr
    communication-service:
      service-instance:
        name: kpc
cmx:
  bus: nats
  http:
    listen: "$(unit_addr "$unit" http)"
YAML
                # Several CMX replicas share the endpoints through a JetStream
                # key-value bucket (kaa-rs extension; the NATS server needs -js).
                if [[ ${SERVICE_REPLICAS[cmx]} -gt 1 ]]; then
                    printf '  replicas:\n    enabled: true\n' >>"$RUN_DIR/$unit.yaml"
                fi
            ;;
            kpc) cat >"$RUN_DIR/$unit.yaml" <<YAML
# Generated by scripts/stack-nats.sh
service:
  instance:
    name: kpc
    replica:
      id: kpc-$i
nats:
  urls: [$NATS_URLS_YAML]
kpc:
  mqtt:
    listen: "$(unit_addr "$unit" mqtt)"
    max-connections: $KPC_MAX_CONNECTIONS
    auth:
      enabled: false
  http:
    listen: "$(unit_addr "$unit" http)"
  extension-instances: [cmx]
  accept-any-token: true
YAML
            ;;
        esac
    done
}

ensure_database() {
    command -v psql >/dev/null || die "psql not found (needed to create database '$PG_DB')"
    local db="${PG_URL##*/}"
    db="${db%%\?*}"
    local admin="${PG_URL%/*}/postgres"
    [[ "$db" =~ ^[A-Za-z0-9_]+$ ]] || die "database name '$db' must be letters, digits and _"
    local exists
    exists="$(psql "$admin" -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")" \
        || die "cannot query PostgreSQL at $(host_port "$PG_URL" 5432)"
    if [[ "$exists" != 1 ]]; then
        psql "$admin" -qc "CREATE DATABASE \"$db\"" || die "cannot create database '$db'"
        echo "created database $db"
    fi
}

start_one() { # name banner
    local name="$1" banner="$2" pid
    if pid="$(owned_pid "$name")"; then
        echo "$name already running (pid $pid)"
        return 0
    fi
    : >"$RUN_DIR/$name.out"
    RUST_LOG="${RUST_LOG:-info}" nohup "$BIN_DIR/$(unit_binary "$name")" "$RUN_DIR_ABS/$name.yaml" \
        >"$RUN_DIR/$name.out" 2>"$RUN_DIR/$name.log" </dev/null &
    pid=$!
    echo "$pid" >"$RUN_DIR/$name.pid"
    for _ in $(seq 1 300); do
        if grep -q "^$banner" "$RUN_DIR/$name.out"; then
            echo "$name started (pid $pid): $(grep -m1 "^$banner" "$RUN_DIR/$name.out")"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$RUN_DIR/$name.pid"
            tail -n 20 "$RUN_DIR/$name.log" >&2
            die "$name exited during start-up (log: $RUN_DIR/$name.log)"
        fi
        sleep 0.1
    done
    die "$name did not report ready within 30 s (log: $RUN_DIR/$name.log)"
}

cmd_start() {
    local nats_hp pg_hp
    # Only the first server of a list is checked (the services fail over to the others).
    nats_hp="$(host_port "${NATS_URL%%,*}" 4222)"
    pg_hp="$(host_port "$PG_URL" 5432)"
    reachable "$nats_hp" || die "NATS is not reachable at $NATS_URL (start it yourself, e.g. nats-server -js; this script never starts it)"
    reachable "$pg_hp" || die "PostgreSQL is not reachable at $pg_hp (start it yourself; this script never starts it)"
    if [[ -z "${KAA_BIN_DIR:-}" ]]; then
        (cd "$ROOT" && cargo build -q -p kaa-example-ecr -p kaa-example-cmx -p kaa-example-kpc) || die "cargo build failed"
        BIN_DIR="$(cd "$ROOT" && realpath "${CARGO_TARGET_DIR:-target}")/debug"
    else
        BIN_DIR="$KAA_BIN_DIR"
    fi
    for s in "${SERVICES[@]}"; do
        [[ -x "$BIN_DIR/$s" ]] || die "$BIN_DIR/$s not found (cargo build -p kaa-example-ecr -p kaa-example-cmx -p kaa-example-kpc)"
    done
    ensure_database
    write_configs
    local unit
    for unit in "${UNITS[@]}"; do
        case "$(unit_binary "$unit")" in
            ecr) start_one "$unit" "ecr listening on" ;;
        esac
    done
    for unit in "${UNITS[@]}"; do
        case "$(unit_binary "$unit")" in
            cmx) start_one "$unit" "cmx running" ;;
        esac
    done
    for unit in "${UNITS[@]}"; do
        case "$(unit_binary "$unit")" in
            kpc) start_one "$unit" "kpc listening on" ;;
        esac
    done
    if [[ ${#UNITS[@]} -eq 3 ]]; then
        echo "REST API: http://$HTTP_LISTEN/api/v1   MQTT: mqtt://$MQTT_LISTEN   state: $RUN_DIR"
    else
        for unit in "${UNITS[@]}"; do
            case "$(unit_binary "$unit")" in
                ecr) echo "REST API ($unit): http://$(unit_addr "$unit" http)/api/v1" ;;
                kpc) echo "MQTT ($unit): mqtt://$(unit_addr "$unit" mqtt)" ;;
            esac
        done
        echo "state: $RUN_DIR"
    fi
}

cmd_stop() {
    local pid stopped=0
    # Reverse order: KPC first (no new device traffic), ECR last.
    local order=() unit svc
    for svc in kpc cmx ecr; do
        for unit in "${UNITS[@]}"; do
            [[ "$(unit_binary "$unit")" == "$svc" ]] && order+=("$unit")
        done
    done
    # Replicas a previous `start` with more of them left behind.
    for pidfile in "$RUN_DIR"/*.pid; do
        [[ -f "$pidfile" ]] || continue
        unit="$(basename "$pidfile" .pid)"
        [[ " ${order[*]} " == *" $unit "* ]] || order+=("$unit")
    done
    for s in "${order[@]}"; do
        if pid="$(owned_pid "$s")"; then
            kill -TERM "$pid"
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                echo "$s (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
            echo "$s stopped (pid $pid)"
            stopped=$((stopped + 1))
        elif [[ -f "$RUN_DIR/$s.pid" ]]; then
            echo "$s not running (stale PID file removed)"
        fi
        rm -f "$RUN_DIR/$s.pid"
    done
    [[ $stopped -gt 0 ]] || echo "nothing to stop in $RUN_DIR"
}

cmd_status() {
    local pid running=0 health
    for s in "${UNITS[@]}"; do
        if pid="$(owned_pid "$s")"; then
            running=$((running + 1))
            health="$(unit_addr "$s" http)"
            if command -v curl >/dev/null; then
                health="$(curl -s -m 2 "http://$health/health" || echo unreachable)"
            else
                health="(no curl)"
            fi
            echo "$s running (pid $pid) health: $health"
        else
            echo "$s stopped"
        fi
    done
    [[ $running -eq ${#UNITS[@]} ]]
}

mkdir -p "$RUN_DIR"
RUN_DIR_ABS="$(cd "$RUN_DIR" && pwd)"
case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
