#!/usr/bin/env bash
# Installs the browser the console tests drive (tests/it/console.rs): Debian's `chromium` and
# `chromium-driver` (chromedriver), when missing. `make peers` runs it through
# scripts/install-peers.sh; a fresh machine gets them with `make test`.
# Needs apt-get, and root or passwordless sudo; does nothing when both are there.
#
#   scripts/install-browser.sh                 # install what is missing
#   scripts/install-browser.sh --list-missing  # only print the missing packages, one a line
set -euo pipefail

die() { echo "install-browser.sh: $*" >&2; exit 1; }

# Installed means the binary is there (dpkg may list a package whose files were removed).
missing=()
command -v chromium >/dev/null || [[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v chromedriver >/dev/null || [[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)

if [[ "${1:-}" == --list-missing ]]; then
  if [[ ${#missing[@]} -gt 0 ]]; then printf '%s\n' "${missing[@]}"; fi
  exit 0
fi
[[ ${#missing[@]} -gt 0 ]] || exit 0

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  sudo -n true 2>/dev/null ||
    die "installing ${missing[*]} needs root or passwordless sudo (or install them yourself)"
  SUDO=(sudo -n)
fi
command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} yourself (Chromium and its chromedriver, of one version)"
echo "install-browser.sh: installing ${missing[*]}" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
command -v chromedriver >/dev/null || [[ -x /usr/bin/chromedriver ]] ||
  die "apt-get installed ${missing[*]} but there is no chromedriver"
