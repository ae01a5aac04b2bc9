#!/bin/sh
# Make sure Prometheus' programs are here for the observability tests: promtool (checks and unit-tests the alert
# rules in deploy/prometheus/) and the prometheus server (one end-to-end test runs a private one on loopback).
# When one is missing and we are root with apt-get, installs Debian's prometheus package, which has both;
# otherwise says what is missing and exits 0, and the tests that need them are skipped (or fail under CI=true).
# Quiet when all is here.
#
# Installing the package must not leave a Prometheus daemon behind listening on :9090: during the install a
# policy-rc.d that denies every service start is in place (the one already there, if any, is put back after),
# and a daemon of the package (/usr/bin/prometheus running as user prometheus) that started all the same is
# stopped, by its PID.
set -eu

POLICY=/usr/sbin/policy-rc.d

missing_tools() {
    missing=""
    for tool in promtool prometheus; do
        command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
    done
    echo "${missing# }"
}

# PIDs of the Debian package's daemon: processes of /usr/bin/prometheus that run as the package's
# `prometheus` user (its init script starts it so), one per line. A prometheus that someone runs as another user
# (a test's private server, say) is never one of them.
daemon_pids() {
    for proc in /proc/[0-9]*; do
        exe=$(readlink "$proc/exe" 2>/dev/null) || continue
        case "$exe" in
        /usr/bin/prometheus | "/usr/bin/prometheus (deleted)") ;;
        *) continue ;;
        esac
        [ "$(stat -c %U "$proc" 2>/dev/null)" = prometheus ] && echo "${proc#/proc/}"
    done
    return 0
}

missing=$(missing_tools)
if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then why="not root"; else why="no apt-get"; fi
    echo "ensure-prometheus: $missing not found on PATH, and cannot install it ($why); install Prometheus" \
        "(Debian: the prometheus package, which has promtool and the server). The tests that need it will be" \
        "skipped." >&2
    exit 0
fi

echo "ensure-prometheus: $missing not found; installing Debian's prometheus package" >&2

# Deny every service start while the package installs (invoke-rc.d asks policy-rc.d; 101 = action forbidden).
# The policy already there, if any, is moved aside (a rename keeps a symlink a symlink) and put back after.
saved_policy="$POLICY.ensure-prometheus-saved"
had_policy=false
restore_policy() {
    if $had_policy; then
        mv -f "$saved_policy" "$POLICY"
    else
        rm -f "$POLICY"
    fi
}
trap restore_policy EXIT
trap 'exit 130' INT TERM HUP
if [ -e "$POLICY" ] || [ -L "$POLICY" ]; then
    mv -f "$POLICY" "$saved_policy" && had_policy=true
fi
printf '#!/bin/sh\n# ensure-prometheus: no service starts while packages install\nexit 101\n' >"$POLICY"
chmod 755 "$POLICY"

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Belt and braces: a daemon that the install started all the same (a maintainer script that ignored
# policy-rc.d) is stopped, by its PID.
for pid in $(daemon_pids); do
    echo "ensure-prometheus: stopping the prometheus daemon (PID $pid) that the package install started" >&2
    kill "$pid" 2>/dev/null || true
done

missing=$(missing_tools)
if [ -n "$missing" ]; then
    echo "ensure-prometheus: prometheus was installed but $missing is still not on PATH" >&2
    exit 1
fi
exit 0
