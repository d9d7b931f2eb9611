#!/usr/bin/env bash
# The one command for the benchmarks (issue #7):
#   bench/run.sh            full run (tens of minutes on 2 cores)
#   bench/run.sh --quick    smoke run with small counts
# Extra arguments go to caliopen-bench (see `caliopen-bench --help`), e.g.
#   bench/run.sh --only smtp,sys --smtp-messages 2000
# Needs root for Postfix (installed from Debian's package when missing,
# configured loopback-only by bench/postfix.sh and stopped at the end).
# Results: bench/results/latest.json and bench/results/latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || true
cargo build --release --locked -p caliopen-instance -p caliopen-bench
PF=()
if [ "$(id -u)" = 0 ]; then
  read -r PF_ADDR PF_MAILDIR PF_RCPT < <(bench/postfix.sh setup)
  trap 'bench/postfix.sh stop' EXIT
  PF=(--postfix "$PF_ADDR" --postfix-maildir "$PF_MAILDIR" --postfix-rcpt "$PF_RCPT")
else
  echo "not root: Postfix is not set up, the SMTP ratios are skipped" >&2
fi
target/release/caliopen-bench "${PF[@]}" "$@"
