#!/usr/bin/env bash
# Builds nats-server from its Go module (github.com/nats-io/nats-server/v2) at a pinned tag,
# once, into a cache folder outside the repo. Idempotent: a finished build is reused. The
# JetStream tests (tests/it/jetstream.rs) start a 3-node cluster of it on 127.0.0.1.
#
#   scripts/build-nats.sh           # builds if needed, prints the path of nats-server last
#   scripts/build-nats.sh --cached  # builds nothing; fails unless already built
#
# Env: VC_NATS_VERSION overrides the pin; VC_CACHE_DIR the cache root. Runs at the same time
# wait for each other (flock).
set -euo pipefail

NATS_VERSION="${VC_NATS_VERSION:-v2.15.3}"
MODULE=github.com/nats-io/nats-server/v2
CACHE_ROOT="${VC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vehicle-connect}"
OUT="$CACHE_ROOT/nats/$NATS_VERSION"
BIN="$OUT/nats-server"

log() { echo "[nats] $*" >&2; }
# shellcheck source=scripts/go-build-common.sh
. "$(dirname "$0")/go-build-common.sh"

exit_if_built
exit_if_only_cached "${1:-}"
require_go "nats-server is built from its Go module ($MODULE, Go 1.26+ for $NATS_VERSION)."
lock_build nats

# Modules and the build cache stay under the cache root, beside the binary: nothing of the
# user's own GOPATH is read or written, and only the Go module proxy is asked for modules.
export GOPATH="$CACHE_ROOT/nats/gopath"
export GOCACHE="$CACHE_ROOT/nats/gocache"
export GOBIN="$OUT/.bin"
export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false -modcacherw"
# nats-server's go.mod names a newer patch toolchain; the Go on PATH satisfies its `go` line,
# and a toolchain download is what this script must never do.
export GOTOOLCHAIN=local
START=$(date +%s)

log "building $MODULE@$NATS_VERSION (first time takes a few minutes)"
# `go install module@version` builds with the module's own go.mod and go.sum (checked against
# the checksum database), as its release does.
if ! go install -trimpath -ldflags "-s -w" "$MODULE@$NATS_VERSION" >&2; then
  log "ERROR: could not build $MODULE@$NATS_VERSION (is it served by the Go module proxy, and is Go new enough?)"
  exit 1
fi
mv "$GOBIN/nats-server" "$BIN"
rmdir "$GOBIN" 2>/dev/null || true

"$BIN" --version >&2
touch "$OUT/.complete"
log "done in $(( $(date +%s) - START ))s: $BIN"
echo "$BIN"
