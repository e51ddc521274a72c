#!/usr/bin/env bash
# Installs a Debian package where its command is missing, for the test tiers that run a real program:
#   bash scripts/ensure-deb.sh prometheus promtool 300   # PrometheusRule tests, `make test-prometheus`
#   bash scripts/ensure-deb.sh chromium chromium 600     # `make test-status-page`
# Best effort: it never fails the build; without the command those tests skip and print why.
set -u
PACKAGE=$1
COMMAND=$2
LIMIT_S=${3:-300}
say() { echo "ensure-deb($PACKAGE): $*; tests that need $COMMAND will be skipped" >&2; }

if command -v "$COMMAND" >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "no apt-get here"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    say "not root and no password-less sudo"
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# --no-install-recommends keeps it to the package's own binaries; no service is started in containers.
install() { timeout "$LIMIT_S" $SUDO apt-get install -y -q --no-install-recommends "$PACKAGE" >/dev/null 2>&1; }
install || { timeout 120 $SUDO apt-get update -q >/dev/null 2>&1 && install; } || true
if command -v "$COMMAND" >/dev/null 2>&1; then
  echo "ensure-deb($PACKAGE): installed $("$COMMAND" --version 2>&1 | head -n 1)" >&2
else
  say "could not install it"
fi
exit 0
