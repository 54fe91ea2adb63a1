#!/usr/bin/env bash
# A short run of every fuzz target on the stable toolchain (no sanitizer), so each
# target builds and survives a few seconds of input. Long campaigns: see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
RUNS=${KAA_FUZZ_RUNS:-100000}
SECONDS_PER_TARGET=${KAA_FUZZ_SECONDS:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cargo fuzz build -s none
for target in $(cargo fuzz list); do
  echo "fuzz: $target"
  # pipefail makes a crashing target fail the run; only the summary lines are shown.
  cargo fuzz run -s none "$target" -- -runs="$RUNS" -max_total_time="$SECONDS_PER_TARGET" 2>&1 | tail -n 3
done
