#!/usr/bin/env bash
# REST fuzzing of ECR and of the endpoint register with schemathesis, each against
# its own OpenAPI document (/api/v1/openapi.json): every check (no 5xx, responses
# conform to the schema, status codes and content types documented, ...) on a
# bounded number of generated requests per operation.
#
#   bash .ci/rest-fuzz.sh                              # CI default, about 3-4 minutes
#   KAA_REST_FUZZ_EXAMPLES=500 bash .ci/rest-fuzz.sh   # a longer campaign
#   KAA_REST_FUZZ_SERVICES=epr bash .ci/rest-fuzz.sh   # one of them (ecr, epr)
#
# The schemathesis venv lives outside the repository, under
# ${XDG_CACHE_HOME:-$HOME/.cache}/kaa-rs/, and is reused. The script builds the
# `ecr` and `epr` binaries, starts each in turn on an ephemeral port with a
# temporary configuration (embedded store in a temporary directory, a bearer token,
# in-memory bus) and stops it when done.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${KAA_REST_FUZZ_EXAMPLES:-250}
# Checks to leave out (comma-separated), none by default. Each OpenAPI document says
# what its service accepts (ECR: name patterns, page bounds, any JSON body; the
# register: name patterns, metadata objects, batches of at least one endpoint), so
# schema-valid requests must be accepted and schema-invalid ones refused (409, an
# endpoint registered already, is among schemathesis' accepted refusals); `.ci/schemathesis.toml` adds 412 to
# what a valid request may get (If-Match naming another config ID). schemathesis may
# warn "schema validation mismatch" on the DELETE operations: most generated If-Match
# values name no current config ID, so most DELETEs get 412; it is a warning, not a
# failure.
EXCLUDE=${KAA_REST_FUZZ_EXCLUDE-}
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/kaa-rs/schemathesis-$SCHEMATHESIS_VERSION"

if [[ ! -x "$VENV/bin/schemathesis" ]]; then
  echo "rest-fuzz: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

SERVICES=${KAA_REST_FUZZ_SERVICES:-ecr epr}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

TOKEN="rest-fuzz-$RANDOM$RANDOM"

# The configuration of service $1 (ecr or epr), on stdout.
config() {
  case "$1" in
    ecr) cat <<EOF
service:
  instance:
    name: ecr
    replica:
      id: ecr-rest-fuzz
ecr:
  http:
    listen: 127.0.0.1:0
    body-limit: 64KiB
  store:
    url: sqlite://$WORK/ecr.db
auth:
  enabled: true
  tokens:
    - name: fuzz
      token: { env: KAA_REST_FUZZ_TOKEN }
      access: read-write
EOF
    ;;
    # No kaa.applications: any valid app version name may be registered. The
    # default body limit (16 MiB): a schema-valid batch is not refused for its size.
    epr) cat <<EOF
service:
  instance:
    name: epr
    replica:
      id: epr-rest-fuzz
epr:
  http:
    listen: 127.0.0.1:0
  store:
    url: sqlite://$WORK/epr.db
auth:
  enabled: true
  tokens:
    - name: fuzz
      token: { env: KAA_REST_FUZZ_TOKEN }
      access: read-write
EOF
    ;;
    *) echo "rest-fuzz: unknown service $1 (ecr or epr)" >&2; return 1 ;;
  esac
}

exclude=()
if [[ -n "$EXCLUDE" ]]; then
  exclude=(--exclude-checks "$EXCLUDE")
  echo "rest-fuzz: checks left out: $EXCLUDE"
fi

# Starts service $1, waits for it to say where it listens, fuzzes it, stops it.
fuzz_service() {
  local name=$1 bin base pid status
  bin="${CARGO_TARGET_DIR:-target}/debug/$name"
  config "$name" >"$WORK/$name.yaml"
  KAA_REST_FUZZ_TOKEN="$TOKEN" RUST_LOG=warn "$bin" "$WORK/$name.yaml" >"$WORK/$name.stdout" 2>"$WORK/$name.stderr" &
  pid=$!
  PIDS+=("$pid")
  base=""
  for _ in $(seq 1 100); do
    base=$(sed -n "s/^$name listening on \(http:[^ ]*\).*/\1/p" "$WORK/$name.stdout" | head -n 1)
    [[ -n "$base" ]] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "rest-fuzz: $name exited early:"; cat "$WORK/$name.stderr"; return 1
    fi
    sleep 0.1
  done
  if [[ -z "$base" ]]; then
    echo "rest-fuzz: $name did not say where it listens"; cat "$WORK/$name.stderr"; return 1
  fi
  echo "rest-fuzz: $name on $base, $EXAMPLES examples per operation"
  set +e
  "$VENV/bin/schemathesis" --config-file .ci/schemathesis.toml run "$base/api/v1/openapi.json" \
    --url "$base" \
    --header "Authorization: Bearer $TOKEN" \
    --checks all \
    "${exclude[@]}" \
    --max-examples "$EXAMPLES" \
    --workers 1 \
    --seed "${KAA_REST_FUZZ_SEED:-42}" \
    --no-color
  status=$?
  set -e
  if [[ $status -ne 0 ]]; then
    echo "rest-fuzz: schemathesis found problems in $name (exit $status); $name stderr tail:"
    tail -n 20 "$WORK/$name.stderr"
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return $status
}

packages=()
for name in $SERVICES; do
  packages+=(-p "kaa-example-$name")
done
cargo build "${packages[@]}"
failed=0
for name in $SERVICES; do
  fuzz_service "$name" || failed=1
done
exit $failed
