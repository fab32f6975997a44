"""`vtibgp lab up | status | fail | restore | down` end to end, through the command itself:
the lab outlives each command (its daemons are detached), later commands take it over from
its state file, and `down` leaves no namespace, process or file behind. The test harness's
clean-up (`cleanup_stale`) must not touch a lab that is up."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vtibgp.lab import cli as lab_cli
from vtibgp.lab import parts as harness
from vtibgp.lab.gateways import SecondSite

NAMESPACES = {lab_cli.NS_GW, lab_cli.NS_AWS}
STATE = lab_cli.STATE_DIR
BOTH = {"vti01": 100, "vti02": 101}
ONLY2 = {"vti02": 100}
# a line of `ip route` as printed (with or without a nexthop id, whatever the kernel writer uses)
ROUTE_VIA1 = re.compile(r"^10\.0\.0\.0/16 .*dev vti01 .*metric 100\b", re.M)


def vtibgp_lab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vtibgp", "lab", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def ok(*args: str) -> str:
    res = vtibgp_lab(*args)
    assert res.returncode == 0, f"lab {' '.join(args)}: rc={res.returncode}\n" \
                                f"{res.stdout}\n{res.stderr}"
    return res.stdout


def kernel_routes() -> dict[str, dict[str, int]]:
    """Lab prefix -> {device: metric} of the gateway's BGP routes, read from the kernel."""
    out: dict[str, dict[str, int]] = {p: {} for p in lab_cli.VPC}
    for fam in (4, 6):
        for r in harness.routes(lab_cli.NS_GW, proto="bgp", family=fam):
            if r["dst"] in out:
                out[r["dst"]][r["dev"]] = int(r["metric"])
    return out


def assert_routes(want: dict[str, int]) -> None:
    assert kernel_routes() == {p: want for p in lab_cli.VPC}


def lab_pids() -> list[int]:
    """BIRD, ExaBGP and every vtibgp ExaBGP started, as the lab's state recorded them."""
    state: dict[str, Any] = json.loads((STATE / "state.json").read_text())
    pids = [int(state["bird"]["pid"]), int(state["exabgp"]["pid"])]
    pids += [int(x) for x in (STATE / "exabgp" / "plugin.pids").read_text().split()]
    return pids


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_naming_lab() -> list[str]:
    """Command lines of live processes that mention the lab's state directory."""
    found: list[str] = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(STATE) in cmdline:
            found.append(f"{d.name}: {cmdline}")
    return found


def host_link_exists() -> bool:
    res = subprocess.run(["ip", "link", "show", "dev", lab_cli.HOST_DEV], capture_output=True,
                         check=False)
    return res.returncode == 0


@pytest.fixture
def lab_owned() -> Iterator[None]:
    """The lab is this test's: none may be up before (the test would take a user's lab
    over), and whatever happens it is removed afterwards."""
    if STATE.exists() or NAMESPACES & set(harness.list_namespaces()) or host_link_exists():
        msg = f"a vtibgp lab is up on this machine ({STATE}): `vtibgp lab down` first"
        if os.environ.get("VTIBGP_REQUIRE_INTEGRATION", "") not in ("", "0"):
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield
    finally:
        res = vtibgp_lab("down", timeout=60)
        # should `down` itself be broken, still leave nothing behind
        harness.Topology(tag="lab", names=(lab_cli.NS_GW, lab_cli.NS_AWS)).down()
        for ns in SecondSite.NAMESPACES:  # (`up --gateways 2`)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", "dev", lab_cli.HOST_DEV], capture_output=True,
                       check=False)
        shutil.rmtree(STATE, ignore_errors=True)
        assert res.returncode == 0, res.stdout + res.stderr


def test_lab_up_fail_restore_down(lab_owned: None) -> None:
    out = ok("up")
    assert "routes in vtibgp-lab-gw: best via vti01 (metric 100), backup via vti02 (metric " \
           "101)" in out
    assert ROUTE_VIA1.search(out) and "169.254.10.1  up" in out  # routes and status
    assert f"curl -s http://{lab_cli.GW_MGMT}:{lab_cli.METRICS_PORT}/metrics" in out
    assert "grafana/vtibgp-dashboard.json" in out
    assert_routes(BOTH)
    pids = lab_pids()
    assert len(pids) >= 3 and all(alive(p) for p in pids)

    # the lab is not the test harness's: its stale-namespace clean-up leaves it alone
    harness.cleanup_stale()
    assert NAMESPACES.issubset(harness.list_namespaces())
    assert all(alive(p) for p in pids)

    # metrics from the host, over the management link
    url = f"http://{lab_cli.GW_MGMT}:{lab_cli.METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        metrics = resp.read().decode()
    assert 'vtibgp_tunnel_up{device="vti01",vpn="vtibgp-lab"} 1.0' in metrics

    status = ok("status")
    assert ROUTE_VIA1.search(status) and "169.254.11.1  up" in status

    out = ok("fail", "1")
    assert "FAILED by `lab fail 1 --signal link`" in out
    assert_routes(ONLY2)
    assert "vti01   no" in out  # vtibgp's status: the device is unusable
    assert "already failed" in ok("fail", "1")  # idempotent
    assert_routes(ONLY2)

    bad = vtibgp_lab("fail", "3")
    assert bad.returncode == 2 and "no tunnel '3'" in bad.stderr

    ok("restore", "1")
    assert_routes(BOTH)

    again = ok("up")
    assert "already up" in again
    assert lab_pids() == pids  # the same daemons: nothing was rebuilt

    assert "removed:" in ok("down")
    assert not NAMESPACES & set(harness.list_namespaces())
    assert not STATE.exists()
    assert not host_link_exists()
    assert not [p for p in pids if alive(p)]
    assert processes_naming_lab() == []

    # idempotent, and clear errors when nothing is up
    assert "nothing to remove" in ok("down")
    for args in (("fail", "1"), ("restore", "2"), ("status",)):
        res = vtibgp_lab(*args)
        assert res.returncode == 1 and "the lab is not up" in res.stderr, args
    assert not STATE.exists()


def test_lab_bgp_signal_and_a_broken_lab_is_rebuilt(lab_owned: None) -> None:
    ok("up", "--no-host-link")
    assert not host_link_exists()
    out = ok("fail", "2", "--signal", "bgp")
    assert "BGP at the VGW: down" in out
    assert_routes({"vti01": 100})
    ok("restore", "vti02")
    assert_routes(BOTH)

    # ExaBGP dies: status says so, fail refuses, up builds the lab again
    exabgp = lab_pids()[1]
    os.kill(exabgp, signal.SIGTERM)
    harness.wait_until(lambda: not alive(exabgp), 10, what="ExaBGP to exit")
    res = vtibgp_lab("status")
    assert res.returncode == 1 and "ExaBGP is not running" in res.stderr
    res = vtibgp_lab("fail", "1")
    assert res.returncode == 1 and "the lab is broken" in res.stderr
    out = ok("up", "--no-host-link")
    assert "partly up (ExaBGP is not running)" in out
    assert_routes(BOTH)


def lab_fail_blackhole(tunnel: str) -> subprocess.Popen[str]:
    """`lab fail TUNNEL --signal blackhole`, started (the command's own code: the top-level
    parser of `vtibgp` may not offer the signal yet)."""
    code = f"import sys; from vtibgp.lab import cli; sys.exit(cli.fail({tunnel!r}, 'blackhole'))"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)


def nft_ruleset(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft not found (apt-get install nftables)")
def test_lab_blackhole_signal(lab_owned: None) -> None:
    """A silent failure: nftables at the VGW drops tunnel 1's traffic, the device keeps its
    carrier and BGP is not told; without the probe, the routes move when BGP's hold time
    runs out. `restore` removes the rule, `down` leaves no nftables state."""
    ok("up", "--no-host-link")
    fail = lab_fail_blackhole("1")
    try:
        harness.wait_until(lambda: "tun1" in nft_ruleset(lab_cli.NS_AWS), 30,
                           what="the blackhole rule in the VGW namespace")
        ruleset = nft_ruleset(lab_cli.NS_AWS)
        assert "table inet vtibgp-lab-blackhole" in ruleset and "tun2" not in ruleset
        assert "drop" in ruleset
        assert nft_ruleset(lab_cli.NS_GW) == ""  # the gateway side is untouched
        gw_link = harness.Topology(tag="lab", names=(lab_cli.NS_GW, lab_cli.NS_AWS))
        assert gw_link.link("gw", "vti01")["operstate"] == "UP"  # type: ignore[index]
        out, _ = fail.communicate(timeout=lab_cli.FAIL_TIMEOUT + harness.DEFAULT_HOLD_TIME + 30)
    finally:
        if fail.poll() is None:
            fail.kill()
            fail.wait()
    assert fail.returncode == 0, out
    assert "nftables at the VGW drops all IP traffic on tun1" in out
    assert "vtibgp's probe" in out
    assert "FAILED by `lab fail 1 --signal blackhole`; BLACKHOLED" in out
    assert_routes(ONLY2)
    assert "BLACKHOLED" in ok("status")

    out = ok("restore", "1")
    assert "it failed by blackhole" in out
    assert "vtibgp-lab-blackhole" not in nft_ruleset(lab_cli.NS_AWS)
    assert "BLACKHOLED" not in out
    assert_routes(BOTH)
    ok("restore", "1")  # idempotent

    # a crash after the state was saved, before anything else: restore still cleans up
    harness.Topology(tag="lab", names=(lab_cli.NS_GW, lab_cli.NS_AWS)).blackhole(2, True)
    state = json.loads((STATE / "state.json").read_text())
    state["failed"]["2"] = "blackhole"
    (STATE / "state.json").write_text(json.dumps(state))
    assert "BLACKHOLED" in ok("status")
    ok("restore", "2")
    assert nft_ruleset(lab_cli.NS_AWS) == ""
    assert_routes(BOTH)

    ok("down")
    assert "vtibgp-lab-blackhole" not in subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout


def lan_via(gateway: int, timeout: float = 15) -> str:
    """`lab status` until the LAN router's route to the VPC goes via `gateway`."""
    want = f"{lab_cli.VPC[0]} via gateway {gateway} "
    out = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ok("status")
        if want in out:
            return out
        time.sleep(0.5)
    raise AssertionError(f"no {want!r} in lab status:\n{out}")


def test_lab_with_two_gateways_moves_the_lan(lab_owned: None) -> None:
    """`up --gateways 2`: the LAN router goes via gateway 1 (MED 100) while it has a tunnel,
    via gateway 2 when both of gateway 1's fail, back on the restore; `down` removes all."""
    out = ok("up", "--no-host-link", "--gateways", "2")
    assert f"LAN router ({SecondSite.NAMESPACES[2]}): {lab_cli.VPC[0]} via gateway 1 " \
           "(announced by gateway 1, 2;" in out
    assert "lab fail 2    (both of gateway 1's tunnels" in out
    ok("fail", "1")
    assert "via gateway 1 " in lan_via(1)  # one tunnel left: the LAN stays
    ok("fail", "2")
    assert "(announced by gateway 2;" in lan_via(2)
    ok("restore", "1")
    lan_via(1)
    assert "removed:" in ok("down")
    left = set(harness.list_namespaces()) & {*NAMESPACES, *SecondSite.NAMESPACES}
    assert not left and not STATE.exists() and processes_naming_lab() == []
