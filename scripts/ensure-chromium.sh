#!/usr/bin/env bash
# Installs Debian's `chromium` package where missing: `make test-status-page` loads the gateway's status page in
# it (headless, driven by Playwright over the DevTools protocol; Playwright never downloads a browser of its
# own). Best effort: it never fails the build; without the binary the test skips and prints why.
set -u

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: no apt-get here; the status page test will be skipped" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "ensure-chromium: not root and no password-less sudo; the status page test will be skipped" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
{
  timeout 600 $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 ||
    { timeout 120 $SUDO apt-get update -q >/dev/null 2>&1 &&
      timeout 600 $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }
} || true
if command -v chromium >/dev/null 2>&1; then
  echo "ensure-chromium: installed $(chromium --version 2>/dev/null | head -n 1)" >&2
else
  echo "ensure-chromium: could not install chromium; the status page test will be skipped" >&2
fi
exit 0
