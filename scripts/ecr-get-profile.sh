#!/usr/bin/env bash
# Where an ECR GET over HTTP spends CPU beyond "the store alone" plus "HTTP alone".
#
# Runs the ecr_load bench four times under `perf record` (SQLite store), each time
# repeating one GET phase 30 more times per round (ECR_BENCH_PROFILE), and prints,
# per symbol, the samples of: G (GET over HTTP), R (raw select), H (GET /health) and
# I = G - R - H, each minus the run that repeats nothing. I is the cost of combining
# the two (what the additive bound in BENCHMARKS.md leaves out). Needs perf and
# python3; sampling at 2 kHz, so one sample is 0.5 ms of CPU.
#
#   scripts/ecr-get-profile.sh            # top 25 symbols by I
#   TOP=60 scripts/ecr-get-profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bin=$(cargo bench -p kaa-examples --bench ecr_load --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "ecr_load":
        print(m["executable"])')
for phase in none get-raw get-http health; do
    ECR_BENCH_PROFILE=$phase ECR_BENCH_STORES=sqlite ECR_BENCH_REQUESTS=4000 \
        perf record -q -F 2000 -o "$out/$phase.data" "$bin" --bench >/dev/null 2>&1
    perf report -i "$out/$phase.data" --no-children --sort sym -g none -F sample,sym 2>/dev/null |
        grep -v '^#' | grep -v '^$' >"$out/$phase.txt"
done
python3 - "$out" "${TOP:-25}" <<'PY'
import sys
out, top = sys.argv[1], int(sys.argv[2])
def load(phase):
    d = {}
    for line in open(f"{out}/{phase}.txt"):
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            d[parts[1].strip()] = d.get(parts[1].strip(), 0) + int(parts[0])
    return d
base, r, g, h = (load(p) for p in ("none", "get-raw", "get-http", "health"))
f = lambda d, s: d.get(s, 0) - base.get(s, 0)
total = lambda d: sum(d.values()) - sum(base.values())
print(f"samples beyond the base run: G {total(g)}  R {total(r)}  H {total(h)}  I {total(g) - total(r) - total(h)}")
rows = sorted(((f(g, s) - f(r, s) - f(h, s), f(g, s), f(r, s), f(h, s), s)
               for s in set(base) | set(r) | set(g) | set(h)), reverse=True)
print(f"{'I':>6} {'G':>6} {'R':>6} {'H':>6}  symbol")
for row in rows[:top]:
    print("%6d %6d %6d %6d  %s" % row)
PY
