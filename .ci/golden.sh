#!/usr/bin/env bash
# Regenerates every golden vector file with Apache Avro's own Python implementation
# and fails if the committed vectors differ: the vectors in the repo are exactly what
# the reference implementation writes for the RFC schemas.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import avro' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'avro==1.12.2'
fi
found=0
for script in */tests/golden/generate.py; do
  [ -f "$script" ] || continue
  found=1
  echo "golden: $script"
  python3 "$script"
done
[ "$found" = 1 ] || { echo "golden: no generator scripts found" >&2; exit 1; }
git diff --exit-code -- '*/tests/golden/vectors.json'
echo "golden: committed vectors match Apache Avro's output"
