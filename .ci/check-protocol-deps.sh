#!/usr/bin/env bash
# The protocol crates are sans-IO: their normal dependency tree must hold no async
# runtime, NATS, MQTT, HTTP or database crate (README.md, "Crate map").
# Fails the run if one does. It also checks itself against an edge crate that
# is supposed to have such dependencies, so a broken check cannot pass silently.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOCOL_CRATES=(kaa-ism kaa-kp kaa-esp kaa-cdtp kaa-elce kaa-ecap kaa-cmp)
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

# The layers above: the CMX and KPC service crates, and the `cmx` and `kpc`
# binaries' packages, hold no database or OpenAPI crate (ECR's store and REST API
# stay in kaa-ecr), and the fuzz crate depends on the libraries it fuzzes, not on
# the example binaries' crate.
STORE_AND_REST='^(rusqlite|libsqlite3-sys|tokio-postgres|deadpool-postgres|postgres|utoipa) '
for crate in kaa-cmx kaa-kpc kaa-example-cmx kaa-example-kpc; do
  found=$(cargo tree -q -e normal -p "$crate" --prefix none --format '{p}' | sort -u | grep -E "$STORE_AND_REST" || true)
  if [ -n "$found" ]; then
    echo "service-deps: $crate depends on ECR's store or REST crates:" >&2
    echo "$found" | sed 's/^/  /' >&2
    status=1
  else
    echo "service-deps: $crate ok (no database, no utoipa)"
  fi
done
if cargo tree -q -e normal --manifest-path fuzz/Cargo.toml --prefix none --format '{p}' | grep -q '^kaa-examples '; then
  echo "fuzz-deps: the fuzz crate depends on kaa-examples; depend on the library it fuzzes" >&2
  status=1
else
  echo "fuzz-deps: fuzz depends on the libraries it fuzzes only"
fi

# Self-check: kaa-bus is an edge crate built on tokio and async-nats.
if [ -z "$(offenders kaa-bus)" ]; then
  echo "protocol-deps: self-check failed: no forbidden crate found in kaa-bus, the check is broken" >&2
  status=1
fi
# Self-check: kaa-ecr does hold the store and REST crates.
if ! cargo tree -q -e normal -p kaa-ecr --prefix none --format '{p}' | grep -qE "$STORE_AND_REST"; then
  echo "service-deps: self-check failed: no store or REST crate found in kaa-ecr, the check is broken" >&2
  status=1
fi
exit $status
