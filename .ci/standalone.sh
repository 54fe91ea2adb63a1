#!/usr/bin/env bash
# The repository stands on its own: what a user gets from `git clone` is all a
# build, test, bench, fuzz target or script reads, and the README's test command
# passes on a machine with no NATS, PostgreSQL or MQTT server.
#
# 1. No tracked file (other than this script) refers to a `../shared` folder
#    beside the repository.
# 2. The committed HEAD is cloned into a fresh temporary directory with nothing
#    beside it, and `cargo test --workspace` (the README's test command) runs there
#    in a network namespace where only loopback is up (`unshare -n`), with
#    `KAA_REQUIRE_SERVICES` unset: every test that needs a live service must skip
#    visibly (`SKIPPED: …`) and the run must end with 0 failed. Cargo runs offline
#    in there; dependencies are fetched first, outside.
#
# The clone builds into the caller's target directory (CARGO_TARGET_DIR, default
# `<repo>/target`) so registry dependencies are not compiled again. Our own crates
# get the same artifact names there as the caller's (cargo hashes a path package by
# its place in the workspace, not by its absolute path), and cargo decides by file
# times whether they are fresh. So their fingerprints are removed before the run
# (the clone must not reuse binaries built from the caller's tree, which read
# schemas and vectors through the caller's CARGO_MANIFEST_DIR) and after it (the
# caller must not reuse the clone's, whose paths point into a deleted directory).
#
# Needs root or unprivileged user namespaces (then `unshare -r -n`), and `ip`.
# Uncommitted changes are not tested: commit first.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
self=.ci/standalone.sh

echo "standalone: no tracked file refers to ../shared"
if git grep -n -I -e '\.\./shared' -e 'shared/kaa-rfcs' -- . ":(exclude)$self"; then
  echo "standalone: the tracked files above read or point at ../shared, which a clone" \
    "of the repository does not have; put what they need into the repository" >&2
  exit 1
fi

command -v unshare >/dev/null || { echo "standalone: unshare (util-linux) is missing" >&2; exit 1; }
command -v ip >/dev/null || { echo "standalone: ip (iproute2) is missing" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then
  netns=(unshare -n)
else
  netns=(unshare -r -n)
fi

head=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "standalone: note: the work tree has uncommitted changes; testing the committed HEAD $head"
fi

target_dir=${CARGO_TARGET_DIR:-$repo/target}
case "$target_dir" in /*) ;; *) target_dir=$repo/$target_dir ;; esac
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kaa-rs-standalone.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
clone=$tmp/kaa-rs
log=$tmp/test.log

mapfile -t members < <(cargo metadata --no-deps --format-version 1 --offline |
  python3 -c 'import json, sys; print("\n".join(p["name"] for p in json.load(sys.stdin)["packages"]))')
[ "${#members[@]}" -gt 0 ] || { echo "standalone: no workspace member found" >&2; exit 1; }
forget_our_builds() {
  local name
  for name in "${members[@]}"; do
    rm -rf "$target_dir"/debug/.fingerprint/"$name"-*
  done
}
trap 'forget_our_builds; rm -rf "$tmp"' EXIT
forget_our_builds

git clone --quiet --no-checkout "$repo" "$clone"
git -C "$clone" checkout --quiet --detach "$head"
[ ! -e "$tmp/shared" ] || { echo "standalone: $tmp/shared exists" >&2; exit 1; }
echo "standalone: clone of $head in $clone (nothing beside it), target dir $target_dir"

# Dependencies come from the network now, not inside the namespace.
(cd "$clone" && cargo fetch --locked --quiet)

echo "standalone: cargo test --workspace, offline, in a network namespace with only loopback"
status=0
"${netns[@]}" env -u KAA_REQUIRE_SERVICES \
  CARGO_TARGET_DIR="$target_dir" CARGO_NET_OFFLINE=true \
  sh -c 'ip link set lo up && cd "$1" && cargo test --workspace' sh "$clone" \
  2>&1 | tee "$log" || status=$?

# A SKIPPED line goes straight to stderr, so it may land in the middle of the
# harness's "test … " line: look for it anywhere.
echo "standalone: tests skipped for want of a service:"
grep -o 'SKIPPED: .*' "$log" || true
failed=$(grep -E '^test result:' "$log" | grep -vc ' 0 failed;' || true)
results=$(grep -c '^test result:' "$log" || true)
skipped=$(grep -o 'SKIPPED: ' "$log" | wc -l)
totals=$(grep -E '^test result:' "$log" | awk '{p += $4; f += $6; i += $8} END {print p " passed, " f " failed, " i " ignored"}')
if [ "$status" != 0 ] || [ "$failed" != 0 ] || [ "$results" = 0 ]; then
  echo "standalone: cargo test --workspace failed in the clone (exit $status," \
    "$failed test binaries with failures); its output is above" >&2
  exit 1
fi
if [ "$skipped" = 0 ]; then
  echo "standalone: no SKIPPED: line, though no service is reachable in the namespace;" \
    "tests that need one must skip visibly" >&2
  exit 1
fi
echo "standalone: ok: $results test binaries: $totals; $skipped SKIPPED: lines"
