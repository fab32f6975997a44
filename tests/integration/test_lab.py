"""README's first command: `vtibgp lab demo` builds the lab, shows failover and return, and
leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

from vtibgp import lab


def test_lab_demo_shows_failover_and_cleans_up() -> None:
    before = set(lab.list_namespaces())
    res = subprocess.run([sys.executable, "-m", "vtibgp", "lab", "demo", "--pause", "0"],
                         capture_output=True, text=True, timeout=180, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    sections = res.stdout.split("\n=== ")
    up = next(s for s in sections if s.startswith("BGP up on both tunnels"))
    failed = next(s for s in sections if s.startswith("tunnel 1 fails"))
    back = next(s for s in sections if s.startswith("tunnel 1 restored"))
    assert "10.0.0.0/16 dev vti01 scope link metric 100" in up
    assert "10.0.0.0/16 dev vti02 scope link metric 101" in up
    assert "10.0.0.0/16 dev vti02 scope link metric 100" in failed and "vti01" not in failed
    assert "fd10:100::/56 dev vti01 metric 100" in back
    status = next(s for s in sections if s.startswith("vtibgp status"))
    assert "169.254.10.1  up" in status and "169.254.11.1  up" in status
    assert set(lab.list_namespaces()) <= before
