# Sourced by the scripts that build a peer with Go into the cache (build-helm.sh,
# build-health-checker.sh, build-nats.sh): the steps they share before building.
# The caller sets BIN, OUT, CACHE_ROOT and defines log().

# Prints the binary's path and ends the script if a finished build is there.
exit_if_built() {
  if [[ -x "$BIN" && -f "$OUT/.complete" ]]; then
    log "cached: $BIN"
    echo "$BIN"
    exit 0
  fi
}

# $1: the script's first argument. Ends the script when none is built and none may be:
# scripts/check-prereqs.sh asks with --cached to know whether Go is still needed.
exit_if_only_cached() {
  [[ "${1:-}" != --cached ]] || exit 1
}

# $1: what is built and from what, for the error (e.g. "helm is built from its Go module ...").
require_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "ERROR: Go is not installed or not on PATH."
    log "$1 Install Go and retry."
    exit 1
  fi
}

# $1: the lock's name under the cache root. Runs at the same time wait for each other; one
# that waited uses what the other built.
lock_build() {
  mkdir -p "$OUT"
  if command -v flock >/dev/null; then
    exec 9>"$CACHE_ROOT/$1.lock"
    flock 9
    exit_if_built
  fi
}
