#!/usr/bin/env bash
# Installs the Debian packages of the servers the tests run as peers, when missing:
#   vsftpd          scripts/vsftpd.sh (tests/it/ftp_vsftpd.rs)
#   openssh-server  scripts/sshd.sh (tests/it/sftp_peer.rs)
#   openssh-client  sftp and ssh-keygen for those tests (openssh-server pulls it in anyway)
# Does nothing when all are there; otherwise needs root and apt-get. The packages' own
# daemons are not started (a temporary /usr/sbin/policy-rc.d says no, unless one exists
# already, which is then left as it is): the tests start servers of their own.
set -euo pipefail

die() { echo "install-peers.sh: $*" >&2; exit 1; }

# Installed means the binary is there (dpkg may list a package whose files were removed).
missing=()
[[ -x /usr/sbin/vsftpd ]] || command -v vsftpd >/dev/null || missing+=(vsftpd)
[[ -x /usr/sbin/sshd ]] || command -v sshd >/dev/null || missing+=(openssh-server)
command -v sftp >/dev/null && command -v ssh-keygen >/dev/null || missing+=(openssh-client)
[[ ${#missing[@]} -gt 0 ]] || exit 0

[[ "$(id -u)" -eq 0 ]] || die "installing ${missing[*]} needs root (or install them yourself)"
command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} yourself"
echo "install-peers.sh: installing ${missing[*]}" >&2

own_policy=
cleanup() {
  if [[ -n "$own_policy" ]]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\n# Temporary, from vehicle-connect scripts/install-peers.sh.\nexit 101\n' \
    >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  own_policy=1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
