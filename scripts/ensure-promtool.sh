#!/usr/bin/env bash
# Installs Debian's `prometheus` package (promtool and the server) where missing: the PrometheusRule tests
# run `promtool check rules` / `promtool test rules`, `make test-prometheus` runs the server. Best effort: it
# never fails the build; without the binaries those tests skip and print why.
set -u

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-promtool: no apt-get here; promtool tests will be skipped" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "ensure-promtool: not root and no password-less sudo; promtool tests will be skipped" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
{
  # --no-install-recommends keeps it to the server binary + promtool; the service is not started in containers.
  timeout 300 $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 ||
    { timeout 120 $SUDO apt-get update -q >/dev/null 2>&1 &&
      timeout 300 $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; }
} || true
if command -v promtool >/dev/null 2>&1; then
  echo "ensure-promtool: installed $(promtool --version 2>&1 | head -n 1)" >&2
else
  echo "ensure-promtool: could not install promtool; promtool tests will be skipped" >&2
fi
exit 0
