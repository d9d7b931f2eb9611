#!/usr/bin/env bash
# Short smoke run of every fuzz target (default 15 s each), run by .ci/run
# with 10 s per target and no sanitizer (the code under test forbids
# `unsafe`: a panic, hang or runaway allocation is what can be found, and
# libFuzzer reports those without ASan; the build then takes ~4 min instead
# of ~9 on 2 cores). By hand, with AddressSanitizer:
#   fuzz/smoke.sh [SECONDS]
#   FUZZ_SANITIZER=none fuzz/smoke.sh 10      # as in CI
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-15}"
san="${FUZZ_SANITIZER:-address}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s "$san"
for t in $(cargo fuzz list); do
  extra=()
  [ "$t" = privacy_mail ] && extra=(../instance/tests/corpus/eml)
  echo "== fuzz $t (${secs}s, sanitizer $san)"
  # A scratch copy of the corpus, so that new inputs are not left behind.
  work="$(mktemp -d)"
  cp -r "corpus/$t/." "$work/"
  cargo fuzz run -s "$san" "$t" "$work" "${extra[@]}" -- -max_total_time="$secs" -rss_limit_mb=2048
  rm -rf "$work"
done
