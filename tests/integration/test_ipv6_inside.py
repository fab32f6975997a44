"""IPv6 inside addresses end to end (issue 17): an AWS transit gateway VPN whose tunnels have
only IPv6 inside /126s (fd00::/8) and whose BGP sessions and routes are IPv6 only.

`vtibgp aws-import` turns a transit gateway XML (tests/data/aws/ipv6-inside-tgw.xml, its inside
addresses set to the lab's) into vtibgp.yaml; the lab (`Topology(tunnels=(6, 7))`: veth pairs
with IPv6 addresses only) runs the real BIRD as the transit gateway and the real ExaBGP with
vtibgp over IPv6 sessions. BIRD announces IPv6 prefixes, vtibgp installs them through the
tunnel device of the peer that announced them, a link failure moves them to the other
tunnel and the restore brings them back. The namespaces are deleted whatever happens."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from test_plugin import expect, fib, plugin, vtibgp, wait_fib

from vtibgp.lab import parts as harness
from vtibgp.tools.aws_import import import_vpn

DATA = Path(__file__).resolve().parents[1] / "data" / "aws"
V6 = ["fd10:100::/48", "fd10:200::/56", "fd10:300:1::/64"]
T6, T7 = harness.ALL_TUNNELS[6], harness.ALL_TUNNELS[7]
HOLD_TIME = 9  # BGP: the restored tunnel's old session times out soon, and comes back
HOLD_DOWN = 1.0


def lab_xml() -> str:
    """The transit gateway XML with the lab's inside addresses and BIRD's ASN."""
    text = (DATA / "ipv6-inside-tgw.xml").read_text()
    text = text.replace("fd00:64:1:10::", "fd00:0:0:60::").replace("fd00:64:1:11::",
                                                                     "fd00:0:0:70::")
    return text.replace("<asn>4200000000</asn>", f"<asn>{harness.AWS_ASN}</asn>")


def imported_config(tmp_path: Path) -> Path:
    """vtibgp.yaml as aws-import writes it for the lab's devices, made private to this test
    (its own control socket, no metrics port, a short hold-down)."""
    out = tmp_path / "imported"
    import_vpn(lab_xml(), out, devices=(T6.gw_dev, T7.gw_dev))
    data = yaml.safe_load((out / "vtibgp.yaml").read_text())
    assert [(p["address"], p["interface"], p["families"]) for p in data["peers"]] == [
        (T6.aws_v6, "vti06", ["ipv6"]), (T7.aws_v6, "vti07", ["ipv6"])]
    conf = (out / "exabgp.conf").read_text()
    assert f"neighbor {T6.aws_v6} {{" in conf and f"local-address {T6.gw_v6};" in conf
    assert "ipv4 unicast" not in conf
    data.update({"log_level": "debug", "metrics": {"listen": None},
                 "control": {"socket": str(tmp_path / "ctl.sock")},
                 "tunnel": {"hold_down": HOLD_DOWN}, "startup": {"grace_time": 30}})
    path = tmp_path / "vtibgp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def bird_neighbor(bird: harness.BirdPeer, tunnel: int) -> str:
    out = bird.birdc("show", "protocols", "all", f"tun{tunnel}")
    m = re.search(r"Neighbor address:\s+([^\s%]+)", out)  # BIRD adds "%tunN" (the interface)
    assert m is not None, out
    return m.group(1)


def test_ipv6_only_sessions_install_fail_over_and_return(tmp_path: Path,
                                                         exabgp_binary: str) -> None:
    topo = harness.Topology(tunnels=(6, 7))
    names = (topo.gw, topo.aws)
    try:
        topo.up()
        # the pairs carry IPv6 inside addresses only
        for ns, dev in (("gw", "vti06"), ("aws", "tun6"), ("gw", "vti07"), ("aws", "tun7")):
            assert topo.ip(ns, "-4", "-j", "addr", "show", "dev", dev).strip() in ("", "[]",
                                                                                 "[{}]")
        run_lab(topo, tmp_path, exabgp_binary)
    finally:
        topo.down()
    assert not set(names) & set(harness.list_namespaces())


def run_lab(topo: harness.Topology, tmp_path: Path, exabgp: str) -> None:
    cfg = imported_config(tmp_path)
    bird = harness.BirdPeer(topo, tmp_path / "bird", tunnels=(6, 7), hold_time=HOLD_TIME)
    gw = harness.ExaBGPGateway(topo, plugin(cfg), tmp_path / "exabgp", exabgp=exabgp,
                               tunnels=(6, 7), hold_time=HOLD_TIME)
    try:
        bird.start()
        bird.set_prepend(7, 2)  # tunnel 7 less preferred, as AWS users set the backup up
        bird.announce(V6, tunnels=(6, 7))
        gw.start()
        # best through tunnel 6's device, backup through tunnel 7's, one metric higher
        wait_fib(gw, topo, expect(V6, "vti06", "vti07"), family=6, timeout=30)
        assert fib(topo, family=4) == {}  # IPv6 only: no IPv4 route of ours
        for n, t in ((6, T6), (7, T7)):
            assert bird.established(n)
            assert bird_neighbor(bird, n) == t.gw_v6  # the session itself is IPv6
        st = json.loads(vtibgp("status", "--json", "--socket",
                               str(tmp_path / "ctl.sock")).stdout)
        peers = {p["peer"]: p for p in st["peers"]}
        assert (peers[T6.aws_v6]["state"], peers[T6.aws_v6]["device"]) == ("up", "vti06")
        assert (peers[T6.aws_v6]["best"], peers[T7.aws_v6]["backup"]) == (len(V6), len(V6))

        # failover: tunnel 6 loses carrier; the routes move to vti07 (at the best metric)
        # on the link signal, long before BGP's hold time would end the session
        topo.carrier_off(6)
        wait_fib(gw, topo, expect(V6, "vti07"), family=6, timeout=5)

        # restore: carrier back; the session (gone at BIRD's end with the link) is set up
        # again over IPv6 and the routes return through vti06
        topo.carrier_on(6)
        gw.wait_for(lambda: bird.established(6), 4 * HOLD_TIME, what="tun6 established again")
        wait_fib(gw, topo, expect(V6, "vti06", "vti07"), family=6, timeout=4 * HOLD_TIME)
        assert bird_neighbor(bird, 6) == T6.gw_v6

        # a withdraw over the IPv6 session removes the prefix from both tunnels
        bird.withdraw([V6[2]], tunnels=(6, 7))
        wait_fib(gw, topo, expect(V6[:2], "vti06", "vti07"), family=6, timeout=10)
    except BaseException:
        print(f"--- ExaBGP log ---\n{harness.tail(gw.log_text(), 60)}")
        print(f"--- BIRD log ---\n{harness.tail(bird.log_text(), 40)}")
        raise
    finally:
        gw.stop()
        bird.stop()
