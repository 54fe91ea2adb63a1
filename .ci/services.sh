#!/usr/bin/env bash
# Starts the local services the tests talk to (NATS with JetStream, PostgreSQL,
# Mosquitto) when they are down, and waits until each answers. Idempotent: a service
# that already answers is left alone. Uses the machine's own packages and the same
# commands the machine image uses at boot (see the `env` entry of the tool library).
set -euo pipefail

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_for() { # name, check command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@"; then echo "services: $name is up"; return 0; fi
    sleep 0.5
  done
  echo "services: $name did not come up" >&2
  return 1
}

# NATS with JetStream on 127.0.0.1:4222
if ! port_open 4222; then
  echo "services: starting nats-server"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
fi
wait_for "NATS (127.0.0.1:4222)" port_open 4222

# PostgreSQL on 127.0.0.1:5432, database `test`, trust auth
pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432; }
if ! pg_ready; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
fi
wait_for "PostgreSQL (127.0.0.1:5432)" pg_ready

# Mosquitto on 127.0.0.1:1883 (other MQTT peers in tests; our own listeners use ephemeral ports)
if ! port_open 1883; then
  echo "services: starting mosquitto"
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
fi
wait_for "Mosquitto (127.0.0.1:1883)" port_open 1883
