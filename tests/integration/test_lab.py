"""README's first command: `vtibgp lab demo` builds the lab, shows failover and return, and
leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys

from vtibgp.lab import parts as lab


def has_route(text: str, prefix: str, dev: str, metric: int) -> bool:
    """`ip route` prints a route through a nexthop object as "P nhid N dev D metric M", an
    inline one as "P dev D [scope link] metric M"."""
    pattern = rf"^{re.escape(prefix)} (nhid \d+ )?dev {dev} (scope link )?metric {metric}\b"
    return re.search(pattern, text, re.MULTILINE) is not None


def test_lab_demo_shows_failover_and_cleans_up() -> None:
    before = set(lab.list_namespaces())
    res = subprocess.run([sys.executable, "-m", "vtibgp", "lab", "demo", "--pause", "0"],
                         capture_output=True, text=True, timeout=180, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    sections = res.stdout.split("\n=== ")
    up = next(s for s in sections if s.startswith("BGP up on both tunnels"))
    failed = next(s for s in sections if s.startswith("tunnel 1 fails"))
    back = next(s for s in sections if s.startswith("tunnel 1 restored"))
    assert has_route(up, "10.0.0.0/16", "vti01", 100)
    assert has_route(up, "10.0.0.0/16", "vti02", 101)
    assert has_route(failed, "10.0.0.0/16", "vti02", 100) and "vti01" not in failed
    assert has_route(back, "fd10:100::/56", "vti01", 100)
    status = next(s for s in sections if s.startswith("vtibgp status"))
    assert "169.254.10.1  up" in status and "169.254.11.1  up" in status
    assert set(lab.list_namespaces()) <= before
