"""The Debian root filesystem of the worker image: ``mmdebstrap``'s command for bookworm with Python, from the
host's Debian mirror (:func:`debian_mirror`), without documentation, manual pages or translations."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Final

__all__ = ["DEFAULT_MIRROR", "DPKG_OPTIONS", "PACKAGES", "SUITE", "debian_mirror", "debootstrap"]

SUITE: Final = "bookworm"
PACKAGES: Final = ("python3", "ca-certificates", "libstdc++6")
DEFAULT_MIRROR: Final = "http://deb.debian.org/debian"
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
# Merged /usr by symlinks, as debootstrap does, instead of the usrmerge package, which pulls in perl (50 MB).
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"


def debootstrap(sites: list[Path], out_tar: Path, *, install_dir: str) -> list[str]:
    """The ``mmdebstrap`` command writing the root filesystem as a tar to ``out_tar``: Debian, each of ``sites``
    copied into ``install_dir``, compiled by the image's own Python."""
    merged_usr = [f"--hook-dir={MERGED_USR_HOOKS}"] if Path(MERGED_USR_HOOKS).is_dir() else []
    return [
        *(
            "mmdebstrap",
            "--variant=essential",
            f"--include={','.join(PACKAGES)}",
            "--mode=root",
            "--format=tar",
        ),
        *merged_usr,
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        # mmdebstrap runs a hook with sh, the root filesystem's directory as $1.
        f'--customize-hook=mkdir -p "$1{install_dir}"',
        *(f"--customize-hook=sync-in {shlex.quote(str(site))} {install_dir}" for site in sites),
        f'--customize-hook=chroot "$1" python3 -m compileall -q -j0 {install_dir}',
        *(SUITE, str(out_tar), debian_mirror()),
    ]


def debian_mirror() -> str:
    """The host's Debian mirror for the suite (from /etc/apt's sources), or deb.debian.org."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    try:
        stanzas = deb822.read_text().split("\n\n")
    except OSError:
        stanzas = []
    for stanza in stanzas:
        fields = dict(
            (key.strip().lower(), value.split())
            for key, _, value in (
                line.partition(":") for line in stanza.splitlines() if not line.startswith("#")
            )
        )
        if "deb" in fields.get("types", []) and SUITE in fields.get("suites", []):
            mirrors = [uri for uri in fields.get("uris", []) if uri.startswith(("http://", "https://"))]
            if mirrors:
                return mirrors[0].rstrip("/")
    try:
        lines = Path("/etc/apt/sources.list").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if (
            len(words) >= 3
            and words[0] == "deb"
            and words[2] == SUITE
            and words[1].startswith(("http://", "https://"))
        ):
            return words[1].rstrip("/")
    return DEFAULT_MIRROR
