#!/usr/bin/env bash
# Runs Debian's vsftpd, a production FTP server, on 127.0.0.1 for tests: standalone, in the
# foreground, with its own config, root and certificates in a temp dir.
#
#   scripts/vsftpd.sh [--user U] [--password P] [--ftps | --ftps-implicit]
#                     [--port N] [--pasv-ports MIN-MAX]
#
# Prints `key=value` lines on stdout, then `ready`:
#   port=  control port on 127.0.0.1      root=  the FTP root (`/` for the user), writable
#   ca=    PEM of the CA to trust (FTPS)  log=   vsftpd's protocol and transfer log
# Runs until SIGTERM/SIGINT or until the process that started it exits, then stops vsftpd
# and removes everything it created.
#
# Needs root and the vsftpd package. vsftpd authenticates only through PAM, and PAM reads
# services only from /etc/pam.d, so while it runs a service file /etc/pam.d/vc-vsftpd-<pid>
# exists; it checks the one user/password from the temp dir and nothing from the system.
set -euo pipefail

USER_NAME=vc
PASSWORD=vc-password
TLS=none # none | explicit | implicit
PORT=
PASV_PORTS=32001-32700 # below Linux's ephemeral ports (32768+), apart from libunftp's

die() { echo "vsftpd.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --user) USER_NAME="$2"; shift 2 ;;
    --password) PASSWORD="$2"; shift 2 ;;
    --ftps) TLS=explicit; shift ;;
    --ftps-implicit) TLS=implicit; shift ;;
    --port) PORT="$2"; shift 2 ;;
    --pasv-ports) PASV_PORTS="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

VSFTPD="$(command -v vsftpd || true)"
[[ -n "$VSFTPD" ]] || VSFTPD=/usr/sbin/vsftpd
[[ -x "$VSFTPD" ]] || die "vsftpd is not installed (apt-get install -y vsftpd)"
[[ "$(id -u)" -eq 0 ]] || die "must run as root (vsftpd chroots and authenticates through PAM)"
[[ "$USER_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "user name must match [A-Za-z0-9._-]+"
[[ "$PASV_PORTS" =~ ^([0-9]+)-([0-9]+)$ ]] || die "--pasv-ports wants MIN-MAX"
PASV_MIN="${BASH_REMATCH[1]}"
PASV_MAX="${BASH_REMATCH[2]}"

# Sessions run as this account after login; it owns the FTP root so uploads can write.
GUEST=ftp
getent passwd "$GUEST" >/dev/null || GUEST=nobody

# 1 when whoever started us is already gone; then only a signal stops us.
PARENT=$PPID
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vc-vsftpd.XXXXXX")"
# Linux-PAM lowercases service names; our pid is unique among running copies.
PAM_SERVICE="vc-vsftpd-$$"
PAM_FILE="/etc/pam.d/$PAM_SERVICE"
VSFTPD_PID=

cleanup() {
  trap - EXIT INT TERM
  if [[ -n "$VSFTPD_PID" ]]; then
    # vsftpd runs in its own process group with its per-session children.
    kill -TERM -- "-$VSFTPD_PID" 2>/dev/null || true
    wait "$VSFTPD_PID" 2>/dev/null || true
  fi
  rm -f "$PAM_FILE"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

chmod 755 "$WORK"
mkdir -p "$WORK/root" "$WORK/empty"
chown "$GUEST" "$WORK/root"
chmod 755 "$WORK/root" "$WORK/empty"

# pam_userdb checks the password against a Berkeley DB that Perl's DB_File writes. (Not
# pam_exec: vsftpd takes the SIGCHLD of pam_exec's helper for its own child's and hangs.)
perl -MDB_File -e1 2>/dev/null || die "Perl's DB_File module is needed (Debian package perl)"
VC_USER="$USER_NAME" VC_PASSWORD="$PASSWORD" perl -MDB_File -MFcntl -e '
  tie my %db, "DB_File", $ARGV[0], O_RDWR | O_CREAT, 0600, $DB_HASH or die "$ARGV[0]: $!";
  $db{$ENV{VC_USER}} = $ENV{VC_PASSWORD};
  untie %db;' "$WORK/users.db"
cat >"$PAM_FILE" <<EOF
# Temporary, from vehicle-connect scripts/vsftpd.sh (removed when it stops).
auth    required pam_userdb.so db=$WORK/users
account required pam_permit.so
session required pam_permit.so
EOF

if [[ "$TLS" != none ]]; then
  command -v openssl >/dev/null || die "openssl is needed for FTPS certificates"
  tls="$WORK/tls"
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=vehicle-connect test CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    >/dev/null 2>&1 || die "openssl could not create the CA"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$tls/server.key" -out "$tls/server.csr" >/dev/null 2>&1 \
    || die "openssl could not create the server key"
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$tls/server.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 2 -extfile "$tls/server.ext" -out "$tls/server.pem" >/dev/null 2>&1 \
    || die "openssl could not sign the server certificate"
  chmod 600 "$tls/server.key" "$tls/ca.key"
fi

write_config() {
  cat >"$WORK/vsftpd.conf" <<EOF
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port=$1
background=NO
ftpd_banner=vehicle-connect test vsftpd
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
# Every login is the PAM-checked user, mapped to one system account, jailed in the root.
guest_enable=YES
guest_username=$GUEST
virtual_use_local_privs=YES
local_root=$WORK/root
chroot_local_user=YES
allow_writeable_chroot=YES
pam_service_name=$PAM_SERVICE
secure_chroot_dir=$WORK/empty
pasv_enable=YES
pasv_min_port=$PASV_MIN
pasv_max_port=$PASV_MAX
port_enable=YES
connect_from_port_20=NO
# Namespaces and the seccomp filter need privileges containers often lack.
isolate=NO
isolate_network=NO
seccomp_sandbox=NO
syslog_enable=NO
vsftpd_log_file=$WORK/vsftpd.log
xferlog_enable=YES
log_ftp_protocol=YES
EOF
  if [[ "$TLS" != none ]]; then
    cat >>"$WORK/vsftpd.conf" <<EOF
ssl_enable=YES
rsa_cert_file=$WORK/tls/server.pem
rsa_private_key_file=$WORK/tls/server.key
force_local_logins_ssl=YES
force_local_data_ssl=YES
# The built-in default (DES-CBC3-SHA) is refused by modern clients.
ssl_ciphers=HIGH
EOF
    if [[ "$TLS" == implicit ]]; then
      echo "implicit_ssl=YES" >>"$WORK/vsftpd.conf"
    fi
  fi
  chmod 600 "$WORK/vsftpd.conf"
}

# Start on the given port, or on random free-looking ones until one binds.
attempts=20
if [[ -n "$PORT" ]]; then attempts=1; fi
for ((i = 0; i < attempts; i++)); do
  port="${PORT:-$((20000 + RANDOM % 10000))}"
  write_config "$port"
  : >"$WORK/vsftpd.out"
  setsid "$VSFTPD" "$WORK/vsftpd.conf" >"$WORK/vsftpd.out" 2>&1 </dev/null &
  VSFTPD_PID=$!
  for ((t = 0; t < 50; t++)); do
    if ! kill -0 "$VSFTPD_PID" 2>/dev/null; then
      break
    fi
    # Any TCP accept means the listener is up; vsftpd just sees a client that leaves.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port=$port"
      echo "root=$WORK/root"
      if [[ "$TLS" != none ]]; then echo "ca=$WORK/tls/ca.pem"; fi
      echo "log=$WORK/vsftpd.log"
      echo "ready"
      # Serve until told to stop or until whoever started us is gone.
      while kill -0 "$VSFTPD_PID" 2>/dev/null && { [[ "$PARENT" -le 1 ]] || kill -0 "$PARENT" 2>/dev/null; }; do
        sleep 1
      done
      kill -0 "$VSFTPD_PID" 2>/dev/null || die "vsftpd exited: $(cat "$WORK/vsftpd.out")"
      exit 0
    fi
    sleep 0.1
  done
  kill -TERM -- "-$VSFTPD_PID" 2>/dev/null || true
  wait "$VSFTPD_PID" 2>/dev/null || true
  VSFTPD_PID=
  grep -q "could not bind" "$WORK/vsftpd.out" || break
done
die "vsftpd did not start: $(cat "$WORK/vsftpd.out")"
