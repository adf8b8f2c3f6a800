#!/usr/bin/env bash
# Policy compiler benchmark: full compile for 10,000 nodes and 500 rules, then incremental
# updates after one node changes. Figures go to docs/benchmarks.md, section "policy".
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p weft-policy --example bench_policy
