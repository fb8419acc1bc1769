#!/usr/bin/env bash
# Builds kube-apiserver and etcd from their Go modules, once, into a cache folder
# outside the repo. Idempotent: a finished build is reused.
#
#   scripts/build-control-plane.sh           # builds if needed, prints the bin dir last
#   scripts/build-control-plane.sh --cached  # builds nothing; fails unless already built
#
# Env: VC_K8S_VERSION, VC_ETCD_VERSION, VC_CACHE_DIR override the pins.
set -euo pipefail

K8S_VERSION="${VC_K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${VC_ETCD_VERSION:-v3.6.16}"
CACHE_ROOT="${VC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vehicle-connect}"
OUT="$CACHE_ROOT/control-plane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"

log() { echo "[control-plane] $*" >&2; }

if [[ -x "$OUT/kube-apiserver" && -x "$OUT/etcd" && -f "$OUT/.complete" ]]; then
  log "cached: $OUT"
  echo "$OUT"
  exit 0
fi
# scripts/check-prereqs.sh asks this to know whether Go is still needed.
[[ "${1:-}" != --cached ]] || exit 1

if ! command -v go >/dev/null 2>&1; then
  log "ERROR: Go is not installed or not on PATH."
  log "kube-apiserver and etcd are built from source with Go (1.26+: etcd $ETCD_VERSION's go.mod). Install Go and retry."
  exit 1
fi

mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vc-cp-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
START=$(date +%s)

# --- kube-apiserver -----------------------------------------------------------
if [[ ! -x "$OUT/kube-apiserver" ]]; then
  log "building kube-apiserver $K8S_VERSION (first time takes several minutes)"
  minor="${K8S_VERSION#v1.}"          # 35.4
  staging="v0.${minor}"                # v0.35.4
  mkdir -p "$WORK/apiserver" && cd "$WORK/apiserver"
  go mod init vc.local/apiserver-build >/dev/null 2>&1
  # k8s.io/kubernetes points its staging modules at ./staging; map each to its
  # published v0.x.y tag, read from the module's own go.mod.
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  [[ -f "$gomod" ]] || { log "ERROR: could not fetch k8s.io/kubernetes@$K8S_VERSION go.mod"; exit 1; }
  mods=$(grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u)
  [[ -n "$mods" ]] || { log "ERROR: no staging replaces found in $gomod"; exit 1; }
  for m in $mods; do go mod edit -replace "$m=$m@$staging"; done
  go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
  log "resolving modules"
  go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" >&2
  major=1; minr="${minor%%.*}"
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minr"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  log "compiling kube-apiserver"
  go build -trimpath -ldflags "$ld" -o "$OUT/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$OUT/kube-apiserver.tmp" "$OUT/kube-apiserver"
fi

# --- etcd ---------------------------------------------------------------------
if [[ ! -x "$OUT/etcd" ]]; then
  log "building etcd $ETCD_VERSION"
  mkdir -p "$WORK/etcd" && cd "$WORK/etcd"
  go mod init vc.local/etcd-build >/dev/null 2>&1
  cat > main.go <<'GO'
// Thin main around etcd's server entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
  go mod tidy >&2
  ev="${ETCD_VERSION#v}"
  go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" .
  mv "$OUT/etcd.tmp" "$OUT/etcd"
fi

"$OUT/kube-apiserver" --version >&2
"$OUT/etcd" --version >&2 | head -3 || true
touch "$OUT/.complete"
log "done in $(( $(date +%s) - START ))s: $OUT"
echo "$OUT"
