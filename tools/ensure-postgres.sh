#!/bin/sh
# Make sure PostgreSQL's server programs are here for the tests' throw-away cluster (hodei._infra.postgres).
# Looks for initdb as the tests do: on PATH, then in /usr/lib/postgresql/*/bin (Debian's layout). When it is
# missing and we are root with apt-get, installs Debian's postgresql package; otherwise says what is missing
# and exits 0, and the tests that need PostgreSQL are skipped (or fail under CI=true). Quiet when all is here.
set -eu

have_initdb() {
    command -v initdb >/dev/null 2>&1 && return 0
    for bin_dir in /usr/lib/postgresql/*/bin; do
        [ -x "$bin_dir/initdb" ] && return 0
    done
    return 1
}

if have_initdb; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-postgres: initdb not found; installing Debian's postgresql package" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    if ! have_initdb; then
        echo "ensure-postgres: postgresql was installed but initdb is still not found" >&2
        exit 1
    fi
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    why="not root"
else
    why="no apt-get"
fi
echo "ensure-postgres: initdb not found on PATH or in /usr/lib/postgresql/*/bin, and cannot install it ($why);" \
    "install PostgreSQL's server package (Debian: postgresql). The tests that need it will be skipped." >&2
exit 0
