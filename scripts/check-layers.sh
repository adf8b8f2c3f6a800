#!/usr/bin/env bash
# Fails if a layer-0/1 (pure) crate pulls in an IO crate as a normal dependency.
# Style guide B.1: vocabulary and sans-IO cores never touch tokio, sockets, databases or TUN.
set -euo pipefail
cd "$(dirname "$0")/.."
pure=(weft-key weft-tailcfg weft-proto weft-mapper weft-policy weft-filter weft-magicsock weft-netmap weft-tka)
bad=0
for c in "${pure[@]}"; do
  [ -d "crates/$c" ] || continue
  hits=$(cargo tree -p "$c" -e normal --prefix none 2>/dev/null \
    | grep -E '^(tokio|mio|socket2|tun-rs|quinn-udp|sqlx|sqlx-core|axum|hyper|hyper-util|reqwest) ' | sort -u || true)
  if [ -n "$hits" ]; then
    echo "layer violation: pure crate $c depends on:"; echo "$hits" | sed 's/^/  /'
    bad=1
  else
    echo "layers: $c is pure"
  fi
done
exit $bad
