#!/usr/bin/env bash
# Dovecot for the IMAP benchmark: a standalone instance with its own config,
# base_dir and log (the system's /etc/dovecot is neither read nor changed),
# listening on loopback only, STARTTLS with a self-signed certificate
# (ssl = required; Dovecot counts loopback connections as secured and would
# take LOGIN in clear there, Caliopen refuses it before STARTTLS: the load
# generator uses STARTTLS on both, so that both pay the same TLS cost), one
# virtual user from a passwd-file (no system account: the mail files belong
# to a bare numeric uid), Maildir storage, Dovecot's default durability
# (mail_fsync = optimized: mail files fsynced when saved, flag changes not).
#   bench/dovecot.sh setup   -> prints "ADDR USER PASSWORD" on stdout
#   bench/dovecot.sh stop    -> stops this instance
# Env: CALIOPEN_BENCH_DOVECOT_PORT (default 10143),
#      CALIOPEN_BENCH_DOVECOT_DIR (default /var/tmp/caliopen-bench/dovecot).
set -euo pipefail
PORT="${CALIOPEN_BENCH_DOVECOT_PORT:-10143}"
DIR="${CALIOPEN_BENCH_DOVECOT_DIR:-/var/tmp/caliopen-bench/dovecot}"
USER_NAME=bench
PASSWORD=bench-password
MAIL_UID=60123
CONF="$DIR/dovecot.conf"
PIDFILE="$DIR/run/master.pid"
# Seconds to wait for Dovecot to start listening, or to exit when stopped.
DEADLINE="${CALIOPEN_BENCH_DOVECOT_DEADLINE:-20}"

die() {
  echo "dovecot.sh: $*" >&2
  if [ -f "$DIR/dovecot.log" ]; then
    echo "--- last lines of $DIR/dovecot.log:" >&2
    tail -n 20 "$DIR/dovecot.log" >&2
  fi
  exit 1
}

port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; }

stop_instance() {
  [ -f "$PIDFILE" ] || return 0
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local end=$((SECONDS + DEADLINE))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "dovecot.sh: Dovecot (pid $pid) still running after ${DEADLINE}s, sending KILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
}

case "${1:-}" in
setup)
  if ! command -v dovecot >/dev/null || [ ! -x /usr/lib/dovecot/imap ]; then
    echo "installing dovecot-imapd (Debian package)..." >&2
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y dovecot-imapd >&2 ||
      die "apt-get install dovecot-imapd failed"
  fi
  # The Debian package may have started the system instance (port 143);
  # this one is separate (its own base_dir and instance_name).
  stop_instance
  if port_open; then
    die "127.0.0.1:$PORT is already taken (set CALIOPEN_BENCH_DOVECOT_PORT)"
  fi
  rm -rf "$DIR/home" "$DIR/run"
  mkdir -p "$DIR/home/$USER_NAME" "$DIR/run"
  chmod 755 "$DIR"
  chown "$MAIL_UID:$MAIL_UID" "$DIR/home/$USER_NAME"
  if [ ! -f "$DIR/cert.pem" ] || [ ! -f "$DIR/key.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dovecot.bench.test" \
      -keyout "$DIR/key.pem" -out "$DIR/cert.pem" >/dev/null 2>&1 ||
      die "openssl could not make the self-signed certificate"
  fi
  chmod 600 "$DIR/key.pem"
  # passwd-file: user:password:uid:gid:gecos:home:shell:extra
  echo "$USER_NAME:{PLAIN}$PASSWORD:$MAIL_UID:$MAIL_UID::$DIR/home/$USER_NAME::" >"$DIR/users"
  # Read by the auth process, which runs as the dovecot user.
  chown root:dovecot "$DIR/users"
  chmod 640 "$DIR/users"
  : >"$DIR/dovecot.log"
  DH=""
  [ -f /usr/share/dovecot/dh.pem ] && DH="ssl_dh = </usr/share/dovecot/dh.pem"
  # Dovecot 2.4 renamed the cleartext switch; this script is for 2.3
  # (Debian 12), and says so when the version differs.
  VERSION="$(dovecot --version | cut -d' ' -f1)"
  case "$VERSION" in
  2.3.*) CLEARTEXT="disable_plaintext_auth = yes" ;;
  *) die "Dovecot $VERSION: this script writes a 2.3 configuration (2.4 renamed settings)" ;;
  esac
  cat >"$CONF" <<EOF
# Written by bench/dovecot.sh: the IMAP benchmark's reference server.
instance_name = caliopen-bench-dovecot
base_dir = $DIR/run
protocols = imap
listen = 127.0.0.1
log_path = $DIR/dovecot.log
info_log_path = $DIR/dovecot.log
ssl = required
ssl_cert = <$DIR/cert.pem
ssl_key = <$DIR/key.pem
$DH
# Plaintext LOGIN only after STARTTLS (except from loopback, which Dovecot
# counts as secured).
$CLEARTEXT
auth_mechanisms = plain login
passdb {
  driver = passwd-file
  args = scheme=PLAIN $DIR/users
}
userdb {
  driver = passwd-file
  args = $DIR/users
}
first_valid_uid = 1000
mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
  separator = /
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $PORT
  }
  inet_listener imaps {
    port = 0
  }
}
protocol imap {
  # The benchmark opens 20+ connections for one user from one address.
  mail_max_userip_connections = 200
}
EOF
  doveconf -c "$CONF" -n >/dev/null 2>"$DIR/doveconf.err" ||
    die "doveconf rejected $CONF: $(cat "$DIR/doveconf.err")"
  timeout "$DEADLINE" dovecot -c "$CONF" >&2 || die "dovecot -c $CONF did not start"
  end=$((SECONDS + DEADLINE))
  until port_open; do
    [ "$SECONDS" -lt "$end" ] || die "Dovecot not listening on 127.0.0.1:$PORT after ${DEADLINE}s"
    sleep 0.1
  done
  echo "Dovecot $VERSION on 127.0.0.1:$PORT (config $CONF, log $DIR/dovecot.log)" >&2
  echo "127.0.0.1:$PORT $USER_NAME $PASSWORD"
  ;;
stop)
  stop_instance
  ;;
*)
  echo "usage: $0 setup|stop" >&2
  exit 2
  ;;
esac
