#!/bin/sh
# Creates the instance on first start, then runs it in the foreground.
set -eu
DATA=/var/lib/caliopen
if [ ! -f "$DATA/caliopen.toml" ]; then
  caliopen init --data "$DATA" --domain "$CALIOPEN_DOMAIN" \
    --smtp 0.0.0.0:2525 --submission 0.0.0.0:5587 --mesh 0.0.0.0:7443 --metrics 0.0.0.0:9925
  echo "created; send $DATA/member.csr.pem to the association, then run 'caliopen join' in the container"
fi
exec caliopen run --config "$DATA/caliopen.toml"
