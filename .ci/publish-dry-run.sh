#!/usr/bin/env bash
# Every library crate can be published to crates.io as it is:
#
# 1. its manifest has what crates.io and docs.rs show (description, licence,
#    repository, readme, keywords, categories, `[package.metadata.docs.rs]`), and
#    its package holds its README, both licence texts and every file of its
#    `schemas/` folder;
# 2. `cargo publish --workspace --dry-run` packages every publishable crate and
#    builds each one from its packaged files alone (path dependencies between our
#    crates resolve to the other packages, as they will on crates.io), with no
#    warning other than the dry run's own.
#
# Needs the crates.io index (network). kaa-examples has `publish = false`.
set -euo pipefail
cd "$(dirname "$0")/.."

metadata=$(cargo metadata --no-deps --format-version 1 --locked)
mapfile -t crates < <(python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p.get("publish") != []:
        print(p["name"], p["manifest_path"].rsplit("/", 1)[0])
' <<<"$metadata")
[ "${#crates[@]}" -gt 0 ] || { echo "publish: no publishable crate found" >&2; exit 1; }

status=0
for entry in "${crates[@]}"; do
  name=${entry%% *}
  dir=${entry#* }
  problems=$(python3 -c '
import json, sys
name = sys.argv[1]
p = next(p for p in json.load(sys.stdin)["packages"] if p["name"] == name)
for field in ("description", "license", "repository", "readme"):
    if not p.get(field):
        print(f"no `{field}`")
for field in ("keywords", "categories"):
    if not p.get(field):
        print(f"no `{field}`")
if not ((p.get("metadata") or {}).get("docs") or {}).get("rs"):
    print("no [package.metadata.docs.rs]")
' "$name" <<<"$metadata")
  listed=$(cargo package --list --allow-dirty -p "$name" 2>/dev/null) || {
    echo "publish: cargo package --list -p $name failed:" >&2
    cargo package --list --allow-dirty -p "$name" >&2 || true
    status=1
    continue
  }
  wanted=(README.md LICENSE-APACHE LICENSE-MIT)
  if [ -d "$dir/schemas" ]; then
    mapfile -t schema_files < <(git -C "$dir" ls-files schemas)
    wanted+=("${schema_files[@]}")
  fi
  for file in "${wanted[@]}"; do
    grep -qxF "$file" <<<"$listed" || problems+=$'\n'"the package lacks $file (the \`include\` list?)"
  done
  problems=$(sed '/^$/d' <<<"$problems")
  if [ -n "$problems" ]; then
    echo "publish: $name:" >&2
    sed 's/^/  /' <<<"$problems" >&2
    status=1
  else
    echo "publish: $name: manifest complete, $(wc -l <<<"$listed") files packaged"
  fi
done
[ "$status" = 0 ] || exit 1

# The dry run verifies each crate against the packages of the others through a local
# registry, which cargo unpacks under $CARGO_HOME/registry/src/<registry>/<name>-<version>
# and caches under registry/cache; an existing directory of the same name and version
# is reused as it is. A previous run's packages (same version, older sources) would
# then be built instead of this run's: remove our crates' unpacked copies first.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
version=$(python3 -c '
import json, sys
print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p.get("publish") != []))
' <<<"$metadata")
# The verification builds (in the target directory's debug/) fingerprint registry
# crates by name and version only, so their compiled copies of our crates go too
# (the workspace's own builds of them are rebuilt when next needed).
target_dir=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' <<<"$metadata")
for entry in "${crates[@]}"; do
  name=${entry%% *}
  rm -rf "$cargo_home"/registry/src/*/"$name-$version" "$cargo_home"/registry/cache/*/"$name-$version.crate" \
    "$target_dir"/debug/.fingerprint/"$name"-*
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --allow-dirty: earlier CI steps may leave files behind; what is checked here is
# that the crates package and build, not the state of the work tree.
cargo publish --workspace --dry-run --locked --allow-dirty 2>&1 | tee "$log"
warnings=$(grep -E '^warning' "$log" | grep -vx 'warning: aborting upload due to dry run' || true)
if [ -n "$warnings" ]; then
  echo "publish: cargo publish --dry-run warned:" >&2
  echo "$warnings" >&2
  exit 1
fi
uploads=$(grep -c '^ *Uploading ' "$log" || true)
if [ "$uploads" != "${#crates[@]}" ]; then
  echo "publish: ${#crates[@]} publishable crates, but the dry run got to $uploads uploads" >&2
  exit 1
fi
echo "publish: all ${#crates[@]} library crates package and build from their packages"
