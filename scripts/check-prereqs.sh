#!/usr/bin/env bash
# Checks, before `make demo` or `make test` starts building, that this machine has what they
# need and cannot install themselves; names each thing that is missing and how to get it, and
# fails if anything is.
#
#   scripts/check-prereqs.sh test
#   scripts/check-prereqs.sh demo [--port PORT:WHAT]...   # and those ports free on 127.0.0.1
#
# Uses only bash builtins and the tools it checks, so a test can run it with a PATH of its own.
set -uo pipefail
src="${BASH_SOURCE[0]}"
[[ "$src" == */* ]] || src="./$src"
ROOT="$(cd "${src%/*}/.." && pwd)"

MODE="${1:-}"
[[ "$MODE" == demo || "$MODE" == test ]] || {
  echo "usage: scripts/check-prereqs.sh demo|test [--port PORT:WHAT]..." >&2
  exit 2
}
shift
PORTS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) PORTS+=("$2"); shift 2 ;;
    *) echo "check-prereqs.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

# The newest `go` line among the Go modules built from source: etcd v3.6.16 and nats-server
# v2.15.3 say 1.26.0 (kube-apiserver v1.35.4 and helm v3.20.2 say 1.25.0). Raise it with the
# pins.
GO_MIN_CONTROL_PLANE=1.26.0
GO_MIN_HELM=1.25.0
GO_MIN_NATS=1.26.0
PYTHON_MIN=3.10 # openapi-core 0.23, in scripts/dms-venv.sh

problems=()
found=()
problem() { problems+=("$1"); }

# 0 when version $1 (dotted numbers) is at least $2.
at_least() {
  local -a have want
  IFS=. read -ra have <<<"$1"
  IFS=. read -ra want <<<"$2"
  local i
  for ((i = 0; i < ${#want[@]}; i++)); do
    local h="${have[i]:-0}" w="${want[i]:-0}"
    ((10#$h > 10#$w)) && return 0
    ((10#$h < 10#$w)) && return 1
  done
  return 0
}

# --- Go: only while something is still to be built from Go modules -------------------------
go_min=
go_for=
if ! "$BASH" "$ROOT/scripts/build-control-plane.sh" --cached >/dev/null 2>&1; then
  go_min=$GO_MIN_CONTROL_PLANE
  go_for="kube-apiserver and etcd"
fi
if [[ "$MODE" == test ]] && ! "$BASH" "$ROOT/scripts/build-helm.sh" --cached >/dev/null 2>&1; then
  if [[ -z "$go_min" ]]; then go_min=$GO_MIN_HELM; fi
  go_for="${go_for:+${go_for/ and /, } and }helm"
fi
if [[ "$MODE" == test ]] && ! "$BASH" "$ROOT/scripts/build-health-checker.sh" --cached >/dev/null 2>&1; then
  if [[ -z "$go_min" ]]; then go_min=$GO_MIN_HELM; fi
  go_for="${go_for:+${go_for/ and /, } and }the health checker"
fi
if [[ "$MODE" == test ]] && ! "$BASH" "$ROOT/scripts/build-nats.sh" --cached >/dev/null 2>&1; then
  if [[ -z "$go_min" ]] || ! at_least "$go_min" "$GO_MIN_NATS"; then go_min=$GO_MIN_NATS; fi
  go_for="${go_for:+${go_for/ and /, } and }nats-server"
fi
if [[ -n "$go_min" ]]; then
  what="go $go_min or newer (builds $go_for from their Go modules, once, into ~/.cache/vehicle-connect)"
  how="install Go from https://go.dev/dl and put its bin dir on PATH (Debian's golang-go is too old)"
  if ! command -v go >/dev/null 2>&1; then
    problem "$what: not on PATH; $how"
  else
    gover="$(go env GOVERSION 2>/dev/null)"
    if [[ "$gover" =~ ^go([0-9]+\.[0-9]+(\.[0-9]+)?) ]]; then
      if at_least "${BASH_REMATCH[1]}" "$go_min"; then
        found+=("$gover")
      else
        problem "$what: found $gover; $how"
      fi
    else
      # A development build names no release; let the build itself judge it.
      found+=("go ${gover:-of unknown version}")
    fi
  fi
fi

# --- Rust: the rust-version of Cargo.toml -------------------------------------------------
rust_min=
while IFS= read -r line; do
  if [[ "$line" =~ ^rust-version[[:space:]]*=[[:space:]]*\"([0-9.]+)\" ]]; then
    rust_min="${BASH_REMATCH[1]}"
    break
  fi
done <"$ROOT/Cargo.toml"
what="cargo and rustc ${rust_min:-?} or newer (Cargo.toml rust-version)"
how="install Rust with rustup (https://rustup.rs), or \`rustup update\`; Debian's rustc is too old"
if ! command -v cargo >/dev/null 2>&1; then
  problem "$what: cargo is not on PATH; $how"
elif ! rustc_out="$(rustc --version 2>&1)"; then
  problem "$what: \`rustc --version\` failed (${rustc_out%%$'\n'*}); $how"
elif [[ "$rustc_out" =~ ^rustc\ ([0-9]+\.[0-9]+\.[0-9]+) ]]; then
  if [[ -n "$rust_min" ]] && ! at_least "${BASH_REMATCH[1]}" "$rust_min"; then
    problem "$what: found rustc ${BASH_REMATCH[1]}; $how"
  else
    found+=("rustc ${BASH_REMATCH[1]}")
  fi
else
  problem "$what: cannot read the version from \`rustc --version\` ($rustc_out); $how"
fi

# --- Python 3 with venv (the demo's tools, the AutoDMS peer) -------------------------------
what="python3 $PYTHON_MIN or newer with its venv module"
if ! command -v python3 >/dev/null 2>&1; then
  problem "$what: not on PATH; apt-get install python3 python3-venv"
elif ! pyver="$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)"; then
  problem "$what: python3 does not run"
elif ! at_least "$pyver" "$PYTHON_MIN"; then
  problem "$what: found Python $pyver; install a newer python3 (or set VC_PYTHON for the AutoDMS venv)"
elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian splits ensurepip off, and `python3 -m venv` fails without it.
  problem "$what: python3 $pyver cannot make venvs; apt-get install python3-venv"
else
  found+=("python3 $pyver")
fi

# --- kubectl, curl ------------------------------------------------------------------------
if [[ "$MODE" == demo ]]; then
  kubectl_for="the demo applies the CRDs and examples and shows their status with it"
  curl_for="the demo posts its sample events with it"
else
  kubectl_for="tests/it/chart.rs dry-runs the Helm chart on the test control plane with it"
  curl_for="tests/it/chart.rs talks to the operator with it"
fi
if command -v kubectl >/dev/null 2>&1; then
  found+=(kubectl)
else
  problem "kubectl ($kubectl_for): not on PATH; install a kubectl within one minor version of the control plane's v1.35 (https://kubernetes.io/docs/tasks/tools/)"
fi
if command -v curl >/dev/null 2>&1; then
  found+=(curl)
else
  problem "curl ($curl_for): not on PATH; apt-get install curl"
fi

# --- root, and the Debian packages `make test` installs itself ------------------------------
if [[ "$MODE" == test ]]; then
  if [[ "$EUID" -ne 0 ]]; then
    problem "root: the tests run vsftpd and sshd as peers (chroot, PAM, a temporary system account), mount a tmpfs and make network namespaces; run make test as root (e.g. in a VM or container)"
  fi
  mapfile -t debs < <("$BASH" "$ROOT/scripts/install-peers.sh" --list-missing)
  if [[ ${#debs[@]} -gt 0 ]]; then
    if ! command -v apt-get >/dev/null 2>&1; then
      problem "Debian packages ${debs[*]} (servers and tools the tests run): missing, and there is no apt-get to install them; install them yourself"
    elif [[ "$EUID" -ne 0 ]] && ! sudo -n true 2>/dev/null; then
      problem "root or passwordless sudo: make peers installs the missing Debian packages ${debs[*]} with apt-get; run as root, or apt-get install them yourself"
    else
      found+=("apt-get (make peers installs ${debs[*]})")
    fi
  fi
fi

# --- ports the demo serves on -------------------------------------------------------------
for p in "${PORTS[@]}"; do
  port="${p%%:*}" what="${p#*:}"
  # A connection that opens means something listens there already.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    problem "port $port on 127.0.0.1 ($what): in use; stop what listens there (\`ss -ltnp 'sport = :$port'\` names it), e.g. an earlier make demo"
  fi
done

if [[ ${#problems[@]} -gt 0 ]]; then
  {
    echo "check-prereqs: make $MODE cannot run on this machine yet; missing:"
    for p in "${problems[@]}"; do echo "  - $p"; done
    echo "(README.md, \"The two commands\", lists what a fresh Debian machine needs.)"
  } >&2
  exit 1
fi
summary="$(printf '%s, ' "${found[@]}")"
echo "check-prereqs: make $MODE has what it needs (${summary%, })" >&2
