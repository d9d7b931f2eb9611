#!/usr/bin/env bash
# Postfix for the benchmark: loopback only, Maildir delivery for one local
# user, Postfix's default durability (the queue file and the Maildir file are
# fsynced before the 250 and before the delivery counts).
#   bench/postfix.sh setup   -> prints "ADDR MAILDIR" on stdout
#   bench/postfix.sh stop    -> stops Postfix and restores the saved main.cf
set -euo pipefail
PORT="${CALIOPEN_BENCH_POSTFIX_PORT:-25}"
USER_NAME=benchmb
DOMAIN=bench.test
BACKUP=/etc/postfix/main.cf.caliopen-bench.orig

case "${1:-}" in
setup)
  if ! command -v smtp-source >/dev/null || ! command -v postfix >/dev/null; then
    echo "installing postfix (Debian package)..." >&2
    echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >&2
  fi
  id "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /usr/sbin/nologin "$USER_NAME"
  [ -f "$BACKUP" ] || cp /etc/postfix/main.cf "$BACKUP"
  [ -f "$BACKUP.master" ] || cp /etc/postfix/master.cf "$BACKUP.master"
  postfix stop >/dev/null 2>&1 || true
  postconf -e \
    "inet_interfaces = loopback-only" \
    "inet_protocols = ipv4" \
    "myhostname = postfix.bench.localdomain" \
    "mydestination = $DOMAIN, localhost" \
    "mynetworks = 127.0.0.0/8" \
    "relayhost =" \
    "home_mailbox = Maildir/" \
    "mailbox_command =" \
    "alias_maps = hash:/etc/aliases" \
    "alias_database = hash:/etc/aliases" \
    "biff = no" \
    "mailbox_size_limit = 0" \
    "message_size_limit = 52428800" \
    "smtpd_banner = \$myhostname ESMTP"
  # One SMTP listener, on loopback.
  sed -i -E "s/^(smtp|127\.0\.0\.1:[0-9]+)[[:space:]]+inet/127.0.0.1:$PORT inet/" /etc/postfix/master.cf
  newaliases
  install -d -o "$USER_NAME" -g "$USER_NAME" "/home/$USER_NAME/Maildir" \
    "/home/$USER_NAME/Maildir/new" "/home/$USER_NAME/Maildir/cur" "/home/$USER_NAME/Maildir/tmp"
  postfix check >&2 || { echo "postfix check failed: see above" >&2; exit 1; }
  postfix start >&2 || postfix reload >&2
  up=
  for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  [ -n "$up" ] || { echo "Postfix is not listening on 127.0.0.1:$PORT after 10 s (see /var/log/mail.log)" >&2; exit 1; }
  echo "127.0.0.1:$PORT /home/$USER_NAME/Maildir $USER_NAME@$DOMAIN"
  ;;
stop)
  postfix stop >/dev/null 2>&1 || true
  if [ -f "$BACKUP" ]; then cp "$BACKUP" /etc/postfix/main.cf; fi
  if [ -f "$BACKUP.master" ]; then cp "$BACKUP.master" /etc/postfix/master.cf; fi
  ;;
*)
  echo "usage: $0 setup|stop" >&2; exit 2 ;;
esac
