#!/usr/bin/env bash
# Installed size of the base install and of each extra, each in a fresh venv (site-packages, less what an
# empty venv already holds). Needs a package index (pip's own configuration).
#   bash scripts/measure-extras.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
PY=${PY:-python3}
$PY -m pip wheel -q --no-deps . -w "$ROOT/wheel"
WHEEL=$(ls "$ROOT"/wheel/eksinfer-*.whl)
$PY -m venv "$ROOT/empty"
empty=$(du -sk "$ROOT"/empty/lib/python3*/site-packages | cut -f1)
for extra in base gateway sim bench plots deploy doctor all; do
  $PY -m venv "$ROOT/$extra"
  spec="$WHEEL"
  [ "$extra" != base ] && spec="eksinfer[$extra] @ file://$WHEEL"
  "$ROOT/$extra/bin/pip" install -q "$spec"
  size=$(du -sk "$ROOT"/"$extra"/lib/python3*/site-packages | cut -f1)
  echo "$extra $(((size - empty) / 1024)) MiB"
done
