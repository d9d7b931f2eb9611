#!/usr/bin/env bash
# The one command for the benchmarks (issue #7):
#   bench/run.sh            full run (tens of minutes on 2 cores)
#   bench/run.sh --quick    smoke run with small counts
# Extra arguments go to caliopen-bench (see `caliopen-bench --help`), e.g.
#   bench/run.sh --only smtp,sys --smtp-messages 2000
# Needs root for Postfix and Dovecot (installed from Debian's packages when
# missing, configured loopback-only by bench/postfix.sh and bench/dovecot.sh,
# and stopped at the end). The IMAP rows alone:
#   bench/run.sh --only imap                  (10,000 messages in each server)
#   bench/run.sh --only imap --imap-messages 2000
#   bench/run.sh --only imap --imap-big       (adds SELECT of a 100,000-message folder)
# Results: bench/results/latest.json and bench/results/latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || true
cargo build --release --locked -p caliopen-instance -p caliopen-bench
PF=()
DC=()
if [ "$(id -u)" = 0 ]; then
  read -r PF_ADDR PF_MAILDIR PF_RCPT < <(bench/postfix.sh setup)
  trap 'bench/postfix.sh stop' EXIT
  PF=(--postfix "$PF_ADDR" --postfix-maildir "$PF_MAILDIR" --postfix-rcpt "$PF_RCPT")
  read -r DC_ADDR DC_USER DC_PASS < <(bench/dovecot.sh setup)
  trap 'bench/postfix.sh stop; bench/dovecot.sh stop' EXIT
  DC=(--dovecot "$DC_ADDR" --dovecot-user "$DC_USER" --dovecot-password "$DC_PASS"
      --dovecot-maildir "${CALIOPEN_BENCH_DOVECOT_DIR:-/var/tmp/caliopen-bench/dovecot}/home/$DC_USER/Maildir")
else
  echo "not root: Postfix and Dovecot are not set up, the SMTP and IMAP ratios are skipped" >&2
fi
target/release/caliopen-bench "${PF[@]}" "${DC[@]}" "$@"
