#!/bin/sh
# Make sure Podman, runc and mmdebstrap are here for the tests' private podman service (hodei._infra.podman)
# and the worker image they build without a registry (hodei._infra.agent_image). When one is missing and we
# are root with apt-get, installs Debian's podman, runc and mmdebstrap packages without their recommends (as
# root, podman runs containers with runc, conmon and its dependencies alone: no catatonit, fuse-overlayfs,
# slirp4netns or uidmap); otherwise says what is missing and exits 0, and the tests that need them are skipped
# (or fail under CI=true). Quiet when all is here.
set -eu

TOOLS="podman runc mmdebstrap"

missing_tools() {
    missing=""
    for tool in $TOOLS; do
        # runc lives in /usr/sbin, which a non-login root shell may not have on PATH; podman finds it there.
        if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ] && [ ! -x "/usr/bin/$tool" ]; then
            missing="$missing $tool"
        fi
    done
    echo "${missing# }"
}

missing=$(missing_tools)
if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-podman: $missing not found; installing Debian's podman, runc and mmdebstrap packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc mmdebstrap >/dev/null
    missing=$(missing_tools)
    if [ -n "$missing" ]; then
        echo "ensure-podman: podman, runc and mmdebstrap were installed but $missing is still not found" >&2
        exit 1
    fi
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    why="not root"
else
    why="no apt-get"
fi
echo "ensure-podman: $missing not found, and cannot install it ($why); install Debian's podman, runc and" \
    "mmdebstrap packages. The tests that need Podman or the agent image will be skipped." >&2
exit 0
