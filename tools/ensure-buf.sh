#!/bin/sh
# Make sure the buf CLI is here for the contract tests (tests/contract/test_buf.py, test_baseline_client.py):
# `buf lint` and `buf breaking` over proto/, see buf.yaml. buf comes from the npm package @bufbuild/buf at the
# version pinned in tools/buf/package-lock.json, installed with `npm ci` into tools/buf/node_modules (never
# globally); the program is then tools/buf/node_modules/.bin/buf. Install scripts are not run
# (--ignore-scripts): the package's bin/buf finds the platform's binary in its optional dependency by itself.
#
# When npm is missing and we are root with apt-get, installs Debian's npm package; otherwise says what is missing
# and exits 0, and the tests that need buf are skipped (or fail under CI=true). Quiet when buf is installed at
# the pinned version.
set -eu

DIR=$(cd "$(dirname "$0")/buf" && pwd)
BUF="$DIR/node_modules/.bin/buf"

# The version package-lock.json pins (its "node_modules/@bufbuild/buf" entry), read without node or jq.
pinned=$(sed -n '/"node_modules\/@bufbuild\/buf"[[:space:]]*:/,/}/s/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' \
    "$DIR/package-lock.json" | head -n 1)
if [ -z "$pinned" ]; then
    echo "ensure-buf: cannot read the pinned @bufbuild/buf version from $DIR/package-lock.json" >&2
    exit 1
fi

if [ -x "$BUF" ] && [ "$("$BUF" --version 2>/dev/null || true)" = "$pinned" ]; then
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ]; then why="not root"; else why="no apt-get"; fi
        echo "ensure-buf: npm not found on PATH, and cannot install it ($why); install npm (Debian: the npm" \
            "package) and run tools/ensure-buf.sh. The tests that need buf will be skipped." >&2
        exit 0
    fi
    echo "ensure-buf: npm not found; installing Debian's npm package" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
    if ! command -v npm >/dev/null 2>&1; then
        echo "ensure-buf: the npm package was installed but npm is still not on PATH" >&2
        exit 1
    fi
fi

echo "ensure-buf: installing buf $pinned (npm @bufbuild/buf) into $DIR/node_modules" >&2
(cd "$DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)

have=$("$BUF" --version 2>&1 || true)
if [ "$have" != "$pinned" ]; then
    echo "ensure-buf: installed, but $BUF --version says '$have', not $pinned" >&2
    exit 1
fi
exit 0
