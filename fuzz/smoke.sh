#!/usr/bin/env bash
# Short smoke run of every fuzz target (default 15 s each). Not part of
# .ci/run: building the targets with sanitizers takes ~9 minutes on 2 cores,
# beyond CI's budget. Run it by hand or in a nightly job:
#   fuzz/smoke.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-15}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build
for t in $(cargo fuzz list); do
  extra=()
  [ "$t" = privacy_mail ] && extra=(../instance/tests/corpus/eml)
  echo "== fuzz $t (${secs}s)"
  # A scratch copy of the corpus, so that new inputs are not left behind.
  work="$(mktemp -d)"
  cp -r "corpus/$t/." "$work/"
  cargo fuzz run "$t" "$work" "${extra[@]}" -- -max_total_time="$secs" -rss_limit_mb=2048
  rm -rf "$work"
done
