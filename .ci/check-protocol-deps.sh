#!/usr/bin/env bash
# The protocol crates are sans-IO: their normal dependency tree must hold no async
# runtime, NATS, MQTT, HTTP or database crate (README.md, "Crate map").
# Fails the run if one does. It also checks itself against an edge crate that
# is supposed to have such dependencies, so a broken check cannot pass silently.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOCOL_CRATES=(kaa-ism kaa-kp kaa-esp kaa-cdtp kaa-elce kaa-cmp)
FORBIDDEN='^(tokio|tokio-[a-z-]+|async-nats|nats|mio|async-std|smol|futures-io|hyper|axum|reqwest|rumqttc|rumqttd|mqttbytes|mqtt-[a-z-]+|paho-mqtt|ntex-mqtt|rusqlite|libsqlite3-sys|redb|postgres|tokio-postgres|sqlx|sqlx-[a-z-]+|deadpool-postgres|bb8|bb8-postgres|redis|lapin) '

offenders() { # crate -> prints forbidden packages in its normal dependency tree
  cargo tree -q -e normal -p "$1" --prefix none --format '{p}' | sort -u | grep -E "$FORBIDDEN" || true
}

status=0
for crate in "${PROTOCOL_CRATES[@]}"; do
  found=$(offenders "$crate")
  if [ -n "$found" ]; then
    echo "protocol-deps: $crate depends on forbidden crates:" >&2
    echo "$found" | sed 's/^/  /' >&2
    status=1
  else
    echo "protocol-deps: $crate ok"
  fi
done

# Self-check: kaa-bus is an edge crate built on tokio and async-nats.
if [ -z "$(offenders kaa-bus)" ]; then
  echo "protocol-deps: self-check failed: no forbidden crate found in kaa-bus, the check is broken" >&2
  status=1
fi
exit $status
