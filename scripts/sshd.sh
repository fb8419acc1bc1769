#!/usr/bin/env bash
# Runs Debian's OpenSSH server on 127.0.0.1 for tests, as an SFTP-only peer: in the
# foreground (`sshd -D -e`), with its own config, host key, client keys and chroot in a temp
# dir, and one temporary system account. /etc/ssh and any system sshd are never touched.
#
#   scripts/sshd.sh [--user U] [--password P] [--port N]
#                   [--host-key-type ed25519|rsa|ecdsa] [--key-passphrase P]
#
# Prints `key=value` lines on stdout, then `ready`:
#   port=        on 127.0.0.1
#   user=, password=  the SFTP account (default vc-sftp-<pid>, a random password)
#   root=        host dir the uploads land in (the client's upload_dir), writable by the user
#   upload_dir=  that dir as the SFTP client sees it (`/upload`; sessions start there)
#   host_key_pub=          the server's public host key (one key, of --host-key-type)
#   host_key_fingerprint=  its SHA256 fingerprint as ssh-keygen -l prints it
#   known_hosts= a known_hosts file pinning `[127.0.0.1]:PORT` to that key
#   client_key=, client_key_pub=  an authorized ed25519 key pair (private key: OpenSSH
#                format, no passphrase); with --key-passphrase also
#   client_key_encrypted=, client_key_encrypted_pub=  one encrypted with that passphrase
#   log=         sshd's log (LogLevel VERBOSE), with internal-sftp's file operations when
#                python3 is there to collect them from the chroot's /dev/log
# Runs until SIGTERM/SIGINT or until the process that started it exits, then stops sshd and
# its sessions, deletes the account and removes everything it created. (If it is killed
# with SIGKILL instead, the next run removes what it left.)
#
# Needs root and the openssh-server package. Layout, in a dir under $VC_SSHD_BASE (default
# /run/vc-sshd; sshd wants every component of a chroot root-owned and not group/world
# writable, so not /tmp):
#   <dir>/jail          root 0755, the ChrootDirectory (`/` for the user)
#   <dir>/jail/upload   the user's 0755, `/upload` inside: sessions are `internal-sftp -d
#                       /upload` (and the account's home is /upload too)
# The account (default vc-sftp-<pid>; --user names one that must not exist yet) has shell
# nologin and a password in /etc/shadow, which sshd checks itself (`UsePAM no`). Sessions can
# only be SFTP: no shell, no commands, no forwarding of any kind, no tty. sshd's privilege
# separation dir /run/sshd is created if missing (and left: any sshd needs it).
set -euo pipefail

USER_NAME=
PASSWORD=
PORT=
HOST_KEY_TYPE=ed25519
KEY_PASSPHRASE=
BASE="${VC_SSHD_BASE:-/run/vc-sshd}"
UPLOAD_DIR=/upload
# Marks our accounts in their GECOS field, with our pid, so a later run can remove those of
# a copy that was killed before it could clean up.
MARK="vehicle-connect scripts/sshd.sh"

die() { echo "sshd.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --user) USER_NAME="$2"; shift 2 ;;
    --password) PASSWORD="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --host-key-type) HOST_KEY_TYPE="$2"; shift 2 ;;
    --key-passphrase) KEY_PASSPHRASE="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

SSHD="$(command -v sshd || true)"
[[ -n "$SSHD" ]] || SSHD=/usr/sbin/sshd
[[ -x "$SSHD" ]] || die "sshd is not installed (apt-get install -y openssh-server, or scripts/install-peers.sh)"
# sshd re-executes itself and refuses to run unless started by absolute path.
SSHD="$(readlink -f "$SSHD")"
[[ "$(id -u)" -eq 0 ]] || die "must run as root (sshd chroots and changes to the SFTP account)"
for tool in ssh-keygen useradd userdel chpasswd pgrep; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done
getent passwd sshd >/dev/null || die "sshd's privilege separation account 'sshd' is missing (reinstall openssh-server)"
case "$HOST_KEY_TYPE" in
  ed25519|rsa|ecdsa) ;;
  *) die "--host-key-type wants ed25519, rsa or ecdsa" ;;
esac
if [[ -n "$PORT" ]]; then
  [[ "$PORT" =~ ^[0-9]+$ ]] && ((PORT > 0 && PORT < 65536)) || die "--port wants a port number"
fi
if [[ -n "$USER_NAME" ]]; then
  [[ "$USER_NAME" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "user name must match [a-z_][a-z0-9_-]{0,31}"
  ! getent passwd "$USER_NAME" >/dev/null || die "account $USER_NAME exists already; name a new one"
else
  USER_NAME="vc-sftp-$$"
fi
if [[ -z "$PASSWORD" ]]; then
  PASSWORD="$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')"
fi
[[ "$PASSWORD" != *$'\n'* ]] || die "the password cannot contain a newline"

# Every component of the chroot must be root-owned and not group/world writable.
check="$BASE"
while [[ -n "$check" && "$check" != / ]]; do
  if [[ -e "$check" ]]; then
    [[ "$(stat -c '%u' "$check")" == 0 && $((8#$(stat -c '%a' "$check") & 8#022)) == 0 ]] \
      || die "$check must be owned by root and not group/world writable (sshd's chroot rule); set VC_SSHD_BASE"
  fi
  check="$(dirname "$check")"
done
install -d -m 0755 -o root -g root "$BASE"
# sshd's privilege separation dir (normally made by systemd's unit, absent in containers).
if [[ ! -d /run/sshd ]]; then
  install -d -m 0755 -o root -g root /run/sshd
fi

# Remove what copies killed before they could clean up left behind (their pid is gone): their
# sshd (found by its config's path) and its sessions, their dir, their account.
reap_stale() {
  local dir pid pids name gecos
  for dir in "$BASE"/vc-sshd-*.*; do
    [[ -d "$dir" && "$dir" =~ /vc-sshd-([0-9]+)\.[A-Za-z0-9]+$ ]] || continue
    pid="${BASH_REMATCH[1]}"
    ! kill -0 "$pid" 2>/dev/null || continue
    pids="$(pgrep -f -- "-f $dir/sshd_config" || true)"
    for pid in $pids; do
      pids="$pids $(pgrep -P "$pid" || true)"
    done
    # shellcheck disable=SC2086
    if [[ -n "${pids// /}" ]]; then kill -KILL $pids 2>/dev/null || true; fi
    rm -rf "$dir"
  done
  while IFS=: read -r name _ _ _ gecos _; do
    [[ "$gecos" =~ ^"$MARK"\ pid=([0-9]+)$ ]] || continue
    ! kill -0 "${BASH_REMATCH[1]}" 2>/dev/null || continue
    pids="$(pgrep -u "$name" || true)"
    # shellcheck disable=SC2086
    if [[ -n "$pids" ]]; then kill -KILL $pids 2>/dev/null || true; fi
    userdel "$name" >/dev/null 2>&1 || true
  done < <(getent passwd)
}
reap_stale

# 1 when whoever started us is already gone; then only a signal stops us.
PARENT=$PPID
WORK=
SSHD_PID=
ACCOUNT_MADE=
SYSLOG_PID=

# "depth pid" for every process under $1 (at depth $2): a connection's monitor, its process
# as the user, its internal-sftp session.
tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null || true); do
    echo "$2 $child"
    tree "$child" $(($2 + 1))
  done
}

# The listener leaves its connections running when it stops, so stop them first, deepest
# first, each while its parent is there to reap it (init in a container may not, or late, and
# userdel refuses an account that still has processes); then the listener.
stop_sshd() {
  [[ -n "$SSHD_PID" ]] || return 0
  local listing depth pids pid t busy
  listing="$(tree "$SSHD_PID" 1 | sort -rn)"
  for depth in $(cut -d' ' -f1 <<<"$listing" | uniq); do
    pids="$(awk -v d="$depth" '$1 == d { print $2 }' <<<"$listing")"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((t = 0; t < 30; t++)); do
      busy=
      # Until reaped (not only exited), so that the next level is there to reap the rest.
      for pid in $pids; do [[ ! -e "/proc/$pid" ]] || busy=1; done
      [[ -n "$busy" ]] || break
      sleep 0.1
    done
  done
  kill -TERM "$SSHD_PID" 2>/dev/null || true
  wait "$SSHD_PID" 2>/dev/null || true
  SSHD_PID=
}

cleanup() {
  trap - EXIT INT TERM
  stop_sshd
  if [[ -n "$SYSLOG_PID" ]]; then
    kill -TERM "$SYSLOG_PID" 2>/dev/null || true
    wait "$SYSLOG_PID" 2>/dev/null || true
  fi
  if [[ -n "$ACCOUNT_MADE" ]]; then
    local i pids
    for ((i = 0; i < 20; i++)); do
      userdel "$USER_NAME" 2>/dev/null && break
      # Still running as the account: a session of ours that outlived sshd.
      pids="$(pgrep -u "$USER_NAME" 2>/dev/null || true)"
      # shellcheck disable=SC2086
      if [[ -n "$pids" ]]; then kill -KILL $pids 2>/dev/null || true; fi
      sleep 0.2
    done
    getent passwd "$USER_NAME" >/dev/null && echo "sshd.sh: could not delete account $USER_NAME" >&2
  fi
  if [[ -n "$WORK" ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

WORK="$(mktemp -d "$BASE/vc-sshd-$$.XXXXXX")"
chmod 755 "$WORK"
JAIL="$WORK/jail"
ROOT="$JAIL$UPLOAD_DIR"
install -d -m 0755 -o root -g root "$JAIL"

# The account. useradd locks /etc/passwd and retries, but copies started together may still
# collide; try again.
for ((i = 0; i < 10; i++)); do
  if useradd --system --no-create-home --home-dir "$UPLOAD_DIR" --shell /usr/sbin/nologin \
    --user-group --comment "$MARK pid=$$" "$USER_NAME" 2>"$WORK/useradd.err"; then
    ACCOUNT_MADE=1
    break
  fi
  ! getent passwd "$USER_NAME" >/dev/null || die "account $USER_NAME appeared meanwhile"
  sleep 0.$((RANDOM % 9 + 1))
done
[[ -n "$ACCOUNT_MADE" ]] || die "useradd failed: $(cat "$WORK/useradd.err")"
# A password also unlocks the account: with `UsePAM no`, sshd refuses every method,
# public key included, for a locked one (`!` in /etc/shadow, as useradd leaves it).
for ((i = 0; i < 10; i++)); do
  if printf '%s:%s\n' "$USER_NAME" "$PASSWORD" | chpasswd 2>"$WORK/chpasswd.err"; then
    break
  fi
  ((i < 9)) || die "chpasswd failed: $(cat "$WORK/chpasswd.err")"
  sleep 0.$((RANDOM % 9 + 1))
done
install -d -m 0755 -o "$USER_NAME" -g "$USER_NAME" "$ROOT"

# Keys: the server's host key, the client's key pair(s).
case "$HOST_KEY_TYPE" in
  rsa) keygen_args=(-t rsa -b 3072) ;;
  ecdsa) keygen_args=(-t ecdsa -b 256) ;;
  *) keygen_args=(-t ed25519) ;;
esac
HOST_KEY="$WORK/ssh_host_${HOST_KEY_TYPE}_key"
ssh-keygen -q "${keygen_args[@]}" -N '' -C "vc-sshd test host" -f "$HOST_KEY" </dev/null \
  || die "ssh-keygen could not create the host key"
HOST_FP="$(ssh-keygen -l -f "$HOST_KEY.pub" | awk '{print $2}')"
ssh-keygen -q -t ed25519 -N '' -C "vc-sshd test client" -f "$WORK/client_key" </dev/null \
  || die "ssh-keygen could not create the client key"
cp "$WORK/client_key.pub" "$WORK/authorized_keys"
if [[ -n "$KEY_PASSPHRASE" ]]; then
  ssh-keygen -q -t ed25519 -N "$KEY_PASSPHRASE" -C "vc-sshd test client (encrypted)" \
    -f "$WORK/client_key_encrypted" </dev/null || die "ssh-keygen could not create the encrypted key"
  cat "$WORK/client_key_encrypted.pub" >>"$WORK/authorized_keys"
fi
# sshd reads it as the user, with StrictModes: root's, not writable by others.
chmod 644 "$WORK/authorized_keys" "$WORK"/*.pub

write_config() {
  cat >"$WORK/sshd_config" <<EOF
# From vehicle-connect scripts/sshd.sh: nothing from /etc/ssh.
ListenAddress 127.0.0.1:$1
AddressFamily inet
HostKey $HOST_KEY
PidFile none
LogLevel VERBOSE
SyslogFacility AUTH
StrictModes yes
UseDNS no
PrintMotd no
PrintLastLog no
Banner none
PermitRootLogin no
AllowUsers $USER_NAME
# Password (against /etc/shadow, without PAM) and public key; nothing else.
UsePAM no
PasswordAuthentication yes
PermitEmptyPasswords no
PubkeyAuthentication yes
AuthorizedKeysFile $WORK/authorized_keys
AuthorizedPrincipalsFile none
KbdInteractiveAuthentication no
HostbasedAuthentication no
IgnoreRhosts yes
GSSAPIAuthentication no
# SFTP only, jailed, starting in the writable dir; no shell, commands, tty or forwarding.
Subsystem sftp internal-sftp
ForceCommand internal-sftp -d $UPLOAD_DIR -l VERBOSE
ChrootDirectory $JAIL
DisableForwarding yes
AllowTcpForwarding no
AllowStreamLocalForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
PermitTTY no
PermitUserRC no
PermitUserEnvironment no
EOF
  chmod 600 "$WORK/sshd_config"
}

# internal-sftp logs its file operations (`-l VERBOSE`) through syslog, from inside the
# chroot: collect them into sshd's log from a /dev/log there. Best effort: without Python 3
# the log only lacks those lines.
: >"$WORK/sshd.log"
if command -v python3 >/dev/null; then
  install -d -m 0755 -o root -g root "$JAIL/dev"
  python3 - "$JAIL/dev/log" "$WORK/sshd.log" <<'PY' &
import os, re, select, socket, sys

path, out = sys.argv[1], sys.argv[2]
parent = os.getppid()
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
os.chmod(path, 0o666)  # sessions run as the SFTP account
# "<priority>Mmm dd hh:mm:ss " before "internal-sftp[pid]: message".
head = re.compile(rb"^<\d+>(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d )?")
with open(out, "ab", buffering=0) as log:
    while os.getppid() == parent:  # until the script is gone
        if select.select([sock], [], [], 1.0)[0]:
            log.write(head.sub(b"", sock.recv(65536)).rstrip(b"\n") + b"\n")
PY
  SYSLOG_PID=$!
  for ((t = 0; t < 50; t++)); do
    [[ ! -S "$JAIL/dev/log" ]] || break
    kill -0 "$SYSLOG_PID" 2>/dev/null || die "the syslog collector for internal-sftp failed"
    sleep 0.1
  done
fi

# Start on the given port, or on random free-looking ones until one binds.
attempts=20
if [[ -n "$PORT" ]]; then attempts=1; fi
for ((i = 0; i < attempts; i++)); do
  port="${PORT:-$((20000 + RANDOM % 10000))}"
  write_config "$port"
  "$SSHD" -t -f "$WORK/sshd_config" 2>"$WORK/sshd-t.err" \
    || die "sshd rejects its config: $(cat "$WORK/sshd-t.err")"
  : >"$WORK/sshd.log"
  setsid "$SSHD" -D -e -f "$WORK/sshd_config" >>"$WORK/sshd.log" 2>&1 </dev/null &
  SSHD_PID=$!
  for ((t = 0; t < 100; t++)); do
    if ! kill -0 "$SSHD_PID" 2>/dev/null; then
      break
    fi
    if grep -q "Server listening on 127.0.0.1 port $port\." "$WORK/sshd.log"; then
      if ((port == 22)); then host_pattern=127.0.0.1; else host_pattern="[127.0.0.1]:$port"; fi
      printf '%s %s\n' "$host_pattern" "$(cut -d' ' -f1,2 "$HOST_KEY.pub")" >"$WORK/known_hosts"
      chmod 644 "$WORK/known_hosts"
      echo "port=$port"
      echo "user=$USER_NAME"
      echo "password=$PASSWORD"
      echo "root=$ROOT"
      echo "upload_dir=$UPLOAD_DIR"
      echo "host_key_pub=$HOST_KEY.pub"
      echo "host_key_fingerprint=$HOST_FP"
      echo "known_hosts=$WORK/known_hosts"
      echo "client_key=$WORK/client_key"
      echo "client_key_pub=$WORK/client_key.pub"
      if [[ -n "$KEY_PASSPHRASE" ]]; then
        echo "client_key_encrypted=$WORK/client_key_encrypted"
        echo "client_key_encrypted_pub=$WORK/client_key_encrypted.pub"
      fi
      echo "log=$WORK/sshd.log"
      echo "ready"
      # Serve until told to stop or until whoever started us is gone.
      while kill -0 "$SSHD_PID" 2>/dev/null && { [[ "$PARENT" -le 1 ]] || kill -0 "$PARENT" 2>/dev/null; }; do
        sleep 1
      done
      kill -0 "$SSHD_PID" 2>/dev/null || die "sshd exited: $(tail -n 20 "$WORK/sshd.log")"
      exit 0
    fi
    sleep 0.1
  done
  stop_sshd
  grep -q "Address already in use" "$WORK/sshd.log" || break
done
die "sshd did not start: $(cat "$WORK/sshd.log")"
