#!/usr/bin/env bash
# Builds helm from its Go module (helm.sh/helm/v3) at a pinned tag, once, into a cache folder
# outside the repo. Idempotent: a finished build is reused.
#
#   scripts/build-helm.sh           # builds if needed, prints the path of the helm binary last
#   scripts/build-helm.sh --cached  # builds nothing; fails unless already built
#
# Env: VC_HELM_VERSION overrides the pin; VC_CACHE_DIR the cache root.
set -euo pipefail

HELM_VERSION="${VC_HELM_VERSION:-v3.20.2}"
CACHE_ROOT="${VC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vehicle-connect}"
OUT="$CACHE_ROOT/helm/$HELM_VERSION"
BIN="$OUT/helm"

log() { echo "[helm] $*" >&2; }
# shellcheck source=scripts/go-build-common.sh
. "$(dirname "$0")/go-build-common.sh"

exit_if_built
exit_if_only_cached "${1:-}"
require_go "helm is built from its Go module (helm.sh/helm/v3, Go 1.25+)."
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vc-helm-build.XXXXXX")"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"
START=$(date +%s)

log "fetching helm.sh/helm/v3@$HELM_VERSION"
json="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION")" || {
  log "ERROR: could not download helm.sh/helm/v3@$HELM_VERSION from the Go module proxy"
  exit 1
}
src="$(sed -n 's/.*"Dir": "\(.*\)".*/\1/p' <<<"$json")"
[[ -f "$src/go.mod" ]] || { log "ERROR: no go.mod in $src"; exit 1; }

# Build inside a writable copy of the module, as helm's own Makefile does (its go.mod and
# go.sum decide every dependency).
cp -r "$src" "$WORK/helm" && chmod -R u+w "$WORK/helm" && cd "$WORK/helm"

# The Kubernetes version helm assumes for lint and `helm template` (.Capabilities) follows
# its client-go module, exactly like the upstream Makefile computes it.
cgo="$(go list -f '{{.Version}}' -m k8s.io/client-go)"   # v0.35.1
kminor="$(cut -d. -f2 <<<"${cgo#v}")"
kmajor=$(( $(cut -d. -f1 <<<"${cgo#v}") + 1 ))

ld="-w -s"
ld+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ld+=" -X helm.sh/helm/v3/internal/version.metadata="
ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$kmajor"
ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kminor"
ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$kmajor"
ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor"

log "resolving modules"
go mod download >&2
log "compiling helm $HELM_VERSION (first time takes a few minutes)"
go build -trimpath -ldflags "$ld" -o "$BIN.tmp" ./cmd/helm
mv "$BIN.tmp" "$BIN"

"$BIN" version >&2
touch "$OUT/.complete"
log "done in $(( $(date +%s) - START ))s: $BIN"
echo "$BIN"
