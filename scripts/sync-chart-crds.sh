#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, the source of truth: `make crds`) into the Helm
# chart's files/crds/ folder, replacing what was there. templates/crds.yaml renders them (not
# Helm's crds/ folder, which Helm installs once and never upgrades).
#
#   scripts/sync-chart-crds.sh           # copy
#   scripts/sync-chart-crds.sh --check   # copy nothing; fail if the chart's copies differ
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=crds
DST=charts/vehicle-connect/files/crds

if [[ "${1:-}" == "--check" ]]; then
  if diff -r -q "$SRC" "$DST" >/dev/null 2>&1; then
    echo "[chart-crds] $DST matches $SRC ($(ls "$SRC"/*.yaml | wc -l) CRDs)" >&2
    exit 0
  fi
  echo "[chart-crds] ERROR: $DST differs from $SRC:" >&2
  diff -r -q "$SRC" "$DST" >&2 || true
  echo "[chart-crds] run 'make chart-crds' (scripts/sync-chart-crds.sh) and commit the result" >&2
  exit 1
fi

mkdir -p "$DST"
rm -f "$DST"/*.yaml
cp "$SRC"/*.yaml "$DST"/
echo "[chart-crds] copied $(ls "$DST"/*.yaml | wc -l) CRDs into $DST" >&2
