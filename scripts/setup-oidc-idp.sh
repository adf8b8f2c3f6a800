#!/usr/bin/env bash
# Installs the test OpenID Connect provider (panva/oidc-provider from the npm registry, pinned
# by crates/weft-oidc/tests/idp/package-lock.json) used by weft-oidc's integration tests.
# Needs Node.js >= 20.19 and npm. Idempotent; prints nothing on success but one line.
set -euo pipefail
cd "$(dirname "$0")/../crates/weft-oidc/tests/idp"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup-oidc-idp: node and npm are required (apt-get install nodejs npm)" >&2
    exit 1
fi
if [ -f node_modules/.package-lock.json ] && cmp -s package-lock.json node_modules/.weft-lock; then
    echo "setup-oidc-idp: already installed"
    exit 0
fi
npm ci --no-audit --no-fund --loglevel=error >&2
cp package-lock.json node_modules/.weft-lock
echo "setup-oidc-idp: installed oidc-provider $(node -p 'require("./node_modules/oidc-provider/package.json").version')"
