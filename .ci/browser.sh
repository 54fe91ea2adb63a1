#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver when either is missing, for the
# rollout page's headless-browser test (examples/tests/rollout_page.rs).
# Idempotent: with both on PATH it does nothing. Needs root (or sudo) and apt.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "browser: $(chromium --version 2>/dev/null | head -n 1); $(chromedriver --version | head -n 1)"
  exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
echo "browser: installing chromium and chromium-driver"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q chromium chromium-driver
echo "browser: $(chromium --version 2>/dev/null | head -n 1); $(chromedriver --version | head -n 1)"
