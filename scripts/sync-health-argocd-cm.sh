#!/usr/bin/env bash
# Writes docs/health/argocd-cm.yaml from docs/health/argocd.lua (the source of truth): the
# argocd-cm keys of the three kinds, each with the script inlined.
#
#   scripts/sync-health-argocd-cm.sh           # write
#   scripts/sync-health-argocd-cm.sh --check   # write nothing; fail if the file differs
set -euo pipefail
cd "$(dirname "$0")/.."
LUA=docs/health/argocd.lua
DST=docs/health/argocd-cm.yaml

render() {
  cat <<'HEAD'
# Generated from docs/health/argocd.lua by scripts/sync-health-argocd-cm.sh (make health-docs);
# edit the .lua file, not this one. Merge these keys into the argocd-cm ConfigMap of your
# Argo CD (or its Helm chart's configs.cm); docs/health/README.md says how.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
HEAD
  for kind in WebhookSubscription FtpConnection ApiConnection; do
    echo "  resource.customizations.health.connect.vehicles.io_$kind: |"
    # Blank lines stay blank: a YAML literal block keeps them as they are.
    sed -e 's/^\(.\)/    \1/' "$LUA"
  done
}

if [[ "${1:-}" == "--check" ]]; then
  if diff -q <(render) "$DST" >/dev/null 2>&1; then
    exit 0
  fi
  echo "[health-docs] ERROR: $DST is not what $LUA makes; run 'make health-docs' and commit" >&2
  exit 1
fi
render >"$DST"
echo "[health-docs] wrote $DST" >&2
