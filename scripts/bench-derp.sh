#!/usr/bin/env bash
# DERP relay benchmark: relay throughput with 1/10/100 client pairs and memory
# for idle connections, next to the loopback TCP copy rate measured in the same
# run. Loopback only; every run is bounded in time and count.
#   BENCH_SECS  seconds per throughput run (default 3)
#   BENCH_IDLE  idle connections for the memory figure (default 10000)
#   BENCH_PKT   packet size in bytes (default 1200)
set -euo pipefail
cd "$(dirname "$0")/.."
# Each process holds up to BENCH_IDLE sockets; raise the soft limit as far as allowed.
hard=$(ulimit -Hn)
want=$(( ${BENCH_IDLE:-10000} + 1024 ))
if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then ulimit -n "$want"; else ulimit -n "$hard"; fi
cargo build --release -p weft-derp --example derp_bench
echo "# derp bench $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -sr), ulimit -n $(ulimit -n)"
timeout 900 target/release/examples/derp_bench
