#!/usr/bin/env bash
# Starts a whole labelled federation on loopback: an association service and
# three instances (alpha.test, beta.test, gamma.test), each with one user.
#
#   deploy/local-mesh.sh [DIR]        (binaries from target/release; CALIOPEN_BIN=DIR to change)
#
# Ports start at BASE_PORT (default 27000): association BASE; instance i (1..3) uses
# BASE+10i (MX), +1 (submission), +2 (mesh, UDP), +3 (metrics). Ctrl-C stops everything.
set -euo pipefail
BIN=${CALIOPEN_BIN:-target/release}
CA="$BIN/caliopen-ca"
C="$BIN/caliopen"
for b in "$CA" "$C"; do
  [ -x "$b" ] || { echo "missing $b: run 'cargo build --release' first" >&2; exit 1; }
done
DIR=${1:-$(mktemp -d -t caliopen-mesh.XXXXXX)}
BASE=${BASE_PORT:-27000}
mkdir -p "$DIR"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_for() { # FILE PATTERN
  for _ in $(seq 1 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  exit 1
}

"$CA" init --dir "$DIR/assoc" --name "Local Association" >/dev/null
"$CA" serve --dir "$DIR/assoc" --listen "127.0.0.1:$BASE" >"$DIR/assoc.out" 2>"$DIR/assoc.log" &
pids+=($!)
wait_for "$DIR/assoc.out" "listening on"

i=0
for name in alpha beta gamma; do
  i=$((i + 1))
  port=$((BASE + 10 * i))
  data="$DIR/$name"
  "$C" init --data "$data" --domain "$name.test" --smtp "127.0.0.1:$port" \
    --submission "127.0.0.1:$((port + 1))" --mesh "127.0.0.1:$((port + 2))" \
    --metrics "127.0.0.1:$((port + 3))" >/dev/null
  "$CA" sign --dir "$DIR/assoc" --csr "$data/member.csr.pem" --member-id "$name" \
    --charter-version 1.0 --endpoint "127.0.0.1:$((port + 2))" --out "$data/signed.pem" >/dev/null
  "$C" join --config "$data/caliopen.toml" --ca "$DIR/assoc/ca.pem" --cert "$data/signed.pem" \
    --association "https://127.0.0.1:$BASE" >/dev/null
  echo "password-of-$name" | "$C" user add --config "$data/caliopen.toml" user --password-stdin >/dev/null
  "$C" run --config "$data/caliopen.toml" >"$data/run.out" 2>"$data/run.log" &
  pids+=($!)
  wait_for "$data/run.out" "smtp "
  echo "$name.test: MX 127.0.0.1:$port, submission 127.0.0.1:$((port + 1)) (user@$name.test / password-of-$name), mesh 127.0.0.1:$((port + 2)), metrics http://127.0.0.1:$((port + 3))/metrics"
done

cat <<USAGE

Federation running in $DIR (association https://127.0.0.1:$BASE).
  Send from alpha to beta over the mesh:
    swaks --server 127.0.0.1:$((BASE + 11)) --tls --auth-user user@alpha.test --auth-password password-of-alpha \\
          --from user@alpha.test --to user@beta.test
  Read beta's mailbox:   $C mail list --config $DIR/beta/caliopen.toml --user user --json
  Revoke gamma:          $CA revoke --dir $DIR/assoc --domain gamma.test
  Members:               $CA list --dir $DIR/assoc
Ctrl-C stops everything.
USAGE
wait
