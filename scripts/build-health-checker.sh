#!/usr/bin/env bash
# Builds vc-health (tests/peers/health: kstatus, Argo CD's Lua and Flux's CEL health checks
# for one object), once per version of its sources, into a cache folder outside the repo.
#
#   scripts/build-health-checker.sh           # builds if needed, prints the binary's path last
#   scripts/build-health-checker.sh --cached  # builds nothing; fails unless already built
#
# The folder is named after a hash of go.mod, go.sum and main.go, so an edit builds anew and
# an unchanged checkout reuses the binary. Runs at the same time wait for each other (flock).
# Env: VC_CACHE_DIR, the cache root (as scripts/build-control-plane.sh).
set -euo pipefail

SRC="$(cd "$(dirname "$0")/../tests/peers/health" && pwd)"
CACHE_ROOT="${VC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vehicle-connect}"

log() { echo "[health-checker] $*" >&2; }

hash="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" | sha256sum | cut -c1-16)"
OUT="$CACHE_ROOT/health/$hash"
BIN="$OUT/vc-health"

# shellcheck source=scripts/go-build-common.sh
. "$(dirname "$0")/go-build-common.sh"

exit_if_built
exit_if_only_cached "${1:-}"
require_go "vc-health is built from tests/peers/health with Go (1.24+)."
lock_build health

export CGO_ENABLED=0
# go.mod and go.sum are committed: a build that would change them fails instead.
export GOFLAGS="-mod=readonly -buildvcs=false"
START=$(date +%s)
log "building $BIN (modules from the Go module proxy on first use)"
(cd "$SRC" && go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" .)
mv "$BIN.tmp" "$BIN"
touch "$OUT/.complete"
log "done in $(( $(date +%s) - START ))s: $BIN"
echo "$BIN"
