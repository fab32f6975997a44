"""Where the tests find libreswan's config parser: installed (/usr/libexec/ipsec/addconn), or
unpacked by `.ci/setup.sh` (libreswan_checker) beside strongSwan, which Debian's libreswan
package conflicts with."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CANDIDATES = ("/usr/libexec/ipsec/addconn", "/opt/vtibgp/libreswan/usr/libexec/ipsec/addconn")


def addconn() -> str | None:
    """libreswan's `addconn`, or None where there is none (CI always has one)."""
    env = os.environ.get("VTIBGP_LIBRESWAN_ADDCONN")
    for path in ((env,) if env else CANDIDATES):
        if Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return None


def libreswan_checkconfig(path: Path) -> subprocess.CompletedProcess[str] | None:
    """libreswan's own parser on `path` (`addconn --checkconfig`), or None without one. In CI
    a missing parser is an error, not a skip."""
    tool = addconn()
    if tool is None:
        if os.environ.get("VTIBGP_REQUIRE_INTEGRATION"):
            raise AssertionError("libreswan's addconn not found (see .ci/setup.sh)")
        return None
    return subprocess.run([tool, "--checkconfig", "--config", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)
