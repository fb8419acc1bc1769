#!/usr/bin/env bash
# Installs the Debian packages of the servers and tools the tests run, when missing:
#   vsftpd          scripts/vsftpd.sh (tests/it/ftp_vsftpd.rs, benches/ftp_zip_memory.rs)
#   openssh-server  scripts/sshd.sh (tests/it/sftp_peer.rs, benches/sftp.rs)
#   openssh-client  sftp and ssh-keygen for those tests (openssh-server pulls it in anyway)
#   openssl         vsftpd.sh's FTPS certificates
#   perl            DB_File, for vsftpd.sh's pam_userdb database (perl-base lacks it)
#   procps          pgrep, for sshd.sh
#   iproute2        ip, for the network namespace of tests/it/ftp_pasv.rs
#   chromium, chromium-driver  the console tests' browser (scripts/install-browser.sh says
#                   which are missing; installed here in the same apt-get run)
# Does nothing when all are there; otherwise needs apt-get, and root or passwordless sudo.
# The packages' own daemons are not started (a temporary /usr/sbin/policy-rc.d says no,
# unless one exists already, which is then left as it is): the tests start servers of their
# own.
#
#   scripts/install-peers.sh                 # install what is missing
#   scripts/install-peers.sh --list-missing  # only print the missing packages, one a line
set -euo pipefail

die() { echo "install-peers.sh: $*" >&2; exit 1; }

# Installed means the binary is there (dpkg may list a package whose files were removed).
missing=()
[[ -x /usr/sbin/vsftpd ]] || command -v vsftpd >/dev/null || missing+=(vsftpd)
[[ -x /usr/sbin/sshd ]] || command -v sshd >/dev/null || missing+=(openssh-server)
command -v sftp >/dev/null && command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v openssl >/dev/null || missing+=(openssl)
perl -MDB_File -e1 2>/dev/null || missing+=(perl)
command -v pgrep >/dev/null || missing+=(procps)
command -v ip >/dev/null || missing+=(iproute2)
# Builtins only: check-prereqs.sh runs this with a PATH of its own (no dirname).
here="${BASH_SOURCE[0]}"
[[ "$here" == */* ]] || here="./$here"
mapfile -t browser < <("$BASH" "${here%/*}/install-browser.sh" --list-missing)
missing+=("${browser[@]}")

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
command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} yourself"
echo "install-peers.sh: installing ${missing[*]}" >&2

own_policy=
cleanup() {
  if [[ -n "$own_policy" ]]; then "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  own_policy=1
  printf '#!/bin/sh\n# Temporary, from vehicle-connect scripts/install-peers.sh.\nexit 101\n' |
    "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${SUDO[@]}" chmod +x /usr/sbin/policy-rc.d
fi
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
