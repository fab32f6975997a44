"""Real IPsec: strongSwan's charon (kernel-libipsec, TUN devices ipsec0/ipsec1) on both ends of
both tunnels, the gateway's swanctl.conf as `aws-import --ike strongswan` writes it, its
updown chained to `vtibgp updown`; BIRD as the VGW, ExaBGP + vtibgp on the gateway.

One lab for the module (2 cores): every test leaves both tunnels up again. The probe is off,
so what moves the routes is the IPsec daemon's updown (BIRD's session stays established:
BGP's 30 s hold time has not run out), except where a test turns it on."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vtibgp.lab import ipsec
from vtibgp.lab import parts as harness

PREFIXES = ["10.60.0.0/16", "10.61.0.0/24"]
VPC_HOST = "10.60.0.1"  # an address of the VPC, on the VGW's loopback
LAN = "192.168.50.1/24"  # the gateway's LAN side, announced to the VGW (return path)
GIVE_UP = 2.0  # DPD gives up 2 s after its request (aws-import: 15 s for a 30 s hold time)
HOLD_DOWN = 1.0

# (in CI a missing strongSwan fails the tests instead of skipping them)
pytestmark = pytest.mark.skipif(ipsec.available() is not None
                                and not os.environ.get("VTIBGP_REQUIRE_INTEGRATION"),
                                reason=f"strongSwan lab: {ipsec.available()}")


@pytest.fixture(scope="module")
def stack() -> Iterator[ipsec.Stack]:
    harness.cleanup_stale()
    work = Path(tempfile.mkdtemp(prefix="vtb-ipsec-"))
    s = ipsec.build(work, PREFIXES, give_up=GIVE_UP, tunnel={"hold_down": HOLD_DOWN},
                    probe={"enabled": False},
                    export={"networks": [str(ipaddress.ip_interface(LAN).network)],
                            "local_as": harness.GW_ASN})
    try:
        s.topology.ip("aws", "addr", "add", f"{VPC_HOST}/32", "dev", "lo")
        # the LAN side's address (this kernel has no dummy devices: on the loopback)
        s.topology.ip("gw", "addr", "add", f"{LAN.split('/')[0]}/32", "dev", "lo")
        ipsec.wait_routes_via(s.topology, PREFIXES, "ipsec0", 100, timeout=60)
        ipsec.wait_routes_via(s.topology, PREFIXES, "ipsec1", 101, timeout=10)
        yield s
    finally:
        s.close()
        shutil.rmtree(work, ignore_errors=True)
    assert s.topology.gw not in harness.list_namespaces()


def routed(stack: ipsec.Stack, dev: str, metric: int = 100, timeout: float = 30.0) -> None:
    ipsec.wait_routes_via(stack.topology, PREFIXES, dev, metric, timeout)


def verbs(stack: ipsec.Stack, n: int, since: float) -> list[str]:
    conn = harness_name(stack, n)
    return [v for t, v, c, _ in stack.ipsec.updown_calls() if c == conn and t >= since]


def harness_name(stack: ipsec.Stack, n: int) -> str:
    return ipsec.aws.connection_name(stack.ipsec.vpn, stack.ipsec.vpn.tunnels[n - 1])


def tunnel_state(stack: ipsec.Stack, dev: str) -> dict[str, object]:
    res = subprocess.run([sys.executable, "-m", "vtibgp", "status", "--json", "--socket",
                          str(stack.socket)], capture_output=True, text=True, timeout=30,
                         check=True)
    found: dict[str, object] = next(d for d in json.loads(res.stdout)["devices"]
                                    if d["device"] == dev)
    return found


def back_to_normal(stack: ipsec.Stack) -> None:
    stack.ipsec.wait_established(30)
    routed(stack, "ipsec0", 100, 60)
    routed(stack, "ipsec1", 101, 10)


def test_up_client_puts_the_routes_through_the_tunnels(stack: ipsec.Stack) -> None:
    calls = stack.ipsec.updown_calls()
    for n, dev in ((1, "ipsec0"), (2, "ipsec1")):
        assert (harness_name(stack, n), dev) in {(c, d) for _, v, c, d in calls
                                                 if v == "up-client"}
        assert stack.ipsec.sa_state(n) == ("ESTABLISHED", "INSTALLED")
        assert stack.bird.established(n)
    # the TUNs carry the AWS-style inside addresses, on the gateway and at the VGW
    for ns, addr in (("gw", "169.254.10.2"), ("aws", "169.254.10.1")):
        info = stack.topology.link(ns, "ipsec0")
        assert info is not None
        assert addr in {a["local"] for a in info["addr_info"]}
    assert tunnel_state(stack, "ipsec0")["usable"] is True


def test_doctor_understands_the_tun_devices(stack: ipsec.Stack) -> None:
    """`vtibgp doctor` in the gateway namespace: no error for the TUNs (no XFRM sysctls
    there), and the DPD of aws-import's swanctl.conf with the lab's charon settings is
    found to fire before BGP's hold time."""
    files = [a for n in (1, 2) for a in ("--swanctl-conf", str(stack.ipsec.gw[n].swanctl_path))]
    res = stack.topology.run(
        "gw", sys.executable, "-m", "vtibgp", "doctor", "--config", str(stack.config),
        "--exabgp-conf", str(stack.gw.conf_path), *files, "--strongswan-conf",
        str(stack.ipsec.gw[1].conf_path), "--ipsec-conf", "/nonexistent", check=False)
    lines = res.stdout.splitlines()
    assert not [x for x in lines if x.startswith("ERROR")], res.stdout
    for dev in ("ipsec0", "ipsec1"):
        assert any(x.startswith("OK") and f"{dev} is a TUN device" in x for x in lines)
    for n in (1, 2):
        assert any(x.startswith("OK") and "ike-liveness" in x and harness_name(stack, n) in x
                   and "before the BGP hold time" in x for x in lines), res.stdout


def test_dpd_timeout_down_client_moves_the_routes(stack: ipsec.Stack) -> None:
    """IKE and ESP of tunnel 1 dropped on the outer link: DPD gives up, charon runs
    down-client, vtibgp moves the routes to ipsec1 while BGP still thinks tunnel 1 is fine;
    the drop lifted, charon restarts the SA (up-client) and the routes return."""
    t0 = time.time()
    stack.ipsec.drop(1, "ipsec")
    try:
        routed(stack, "ipsec1", 100, 30)
        assert "down-client" in verbs(stack, 1, t0)
        assert stack.bird.established(1), "BGP's hold time, not the updown, moved them"
        assert tunnel_state(stack, "ipsec0")["usable"] is False
    finally:
        stack.ipsec.drop(1, None)
    t1 = time.time()
    back_to_normal(stack)
    assert "up-client" in verbs(stack, 1, t1)


def test_terminate_moves_the_routes_and_initiate_brings_them_back(
        stack: ipsec.Stack) -> None:
    t0 = time.time()
    stack.ipsec.terminate(1)
    try:
        routed(stack, "ipsec1", 100, 15)
        assert verbs(stack, 1, t0)[:1] == ["down-client"]
        assert stack.ipsec.sa_state(1) is None
    finally:
        stack.ipsec.initiate(1)
    back_to_normal(stack)
    assert verbs(stack, 1, t0)[-1] == "up-client"


def esp_sent(stack: ipsec.Stack, count: int = 10) -> dict[int, int]:
    """ESP-in-UDP packets per tunnel on the outer link while the LAN pings the VPC."""
    before = ipsec.esp_packets(stack.topology)
    lan = LAN.split("/")[0]
    res = stack.topology.run("gw", "ping", "-n", "-q", "-c", str(count), "-i", "0.05",
                             "-W", "2", "-I", lan, VPC_HOST, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    after = ipsec.esp_packets(stack.topology)
    return {n: after[n] - before[n] for n in after}


def test_lan_traffic_is_esp_in_udp_on_the_outer_link_before_and_after_failover(
        stack: ipsec.Stack) -> None:
    ipsec.count_esp(stack.topology, True)
    try:
        # the VGW returns through the tunnel vtibgp uses (export steering)
        harness.wait_until(lambda: stack.bird.return_tunnel("192.168.50.0/24") == 1, 15)
        sent = esp_sent(stack)
        assert sent[1] >= 10 and sent[2] < 10, sent
        stack.ipsec.terminate(1)
        try:
            routed(stack, "ipsec1", 100, 15)
            harness.wait_until(lambda: stack.bird.return_tunnel("192.168.50.0/24") == 2, 15)
            sent = esp_sent(stack)
            assert sent[2] >= 10 and sent[1] == 0, sent
        finally:
            stack.ipsec.initiate(1)
        back_to_normal(stack)
    finally:
        ipsec.count_esp(stack.topology, False)


def test_a_charon_restart_recreates_the_device_and_vtibgp_follows_it(
        stack: ipsec.Stack) -> None:
    """charon stops: its TUN goes (with the address and the routes through it); started
    again, the TUN comes back under the same name (a new ifindex) and the routes with it."""
    before = stack.topology.link("gw", "ipsec0")
    assert before is not None
    stack.ipsec.gw[1].stop()
    harness.wait_until(lambda: stack.topology.link("gw", "ipsec0") is None, 5)
    routed(stack, "ipsec1", 100, 15)
    stack.ipsec._start_one(True, 1, stack.ipsec.gw[1])
    after = stack.topology.link("gw", "ipsec0")
    assert after is not None and after["ifindex"] != before["ifindex"]
    back_to_normal(stack)


def restart_daemon(stack: ipsec.Stack) -> None:
    """Kill vtibgp's daemon (not the relay, ExaBGP's process): the relay starts a new one,
    which reads the config file (the probe's on/off takes effect only at a start)."""
    daemons = [int(c) for relay in stack.gw.plugin_pids() if harness.pid_alive(relay)
               for c in Path(f"/proc/{relay}/task/{relay}/children").read_text().split()]
    assert daemons
    for pid in daemons:
        os.kill(pid, signal.SIGKILL)
    harness.wait_until(lambda: not any(harness.pid_alive(p) and not harness._is_zombie(p)
                                       for p in daemons), 10)


def test_a_blackhole_is_seen_by_the_probe_only(stack: ipsec.Stack) -> None:
    """ESP dropped, IKE alive: the SA stays established and no updown comes, so with the
    probe off nothing moves (checked for a few DPD rounds); with the probe on (a daemon
    started with it, once its echo requests are answered), the probe moves the routes."""
    t0 = time.time()
    cfg = stack.config.read_text()
    stack.ipsec.drop(1, "blackhole")
    try:
        time.sleep(GIVE_UP * 3)
        assert stack.ipsec.established(1) and verbs(stack, 1, t0) == []
        assert tunnel_state(stack, "ipsec0")["usable"] is True
        routed(stack, "ipsec0", 100, 1)
        stack.ipsec.drop(1, None)
        stack.config.write_text(cfg.replace("enabled: false", "enabled: true"))
        restart_daemon(stack)
        harness.wait_until(lambda: probe(stack, "ipsec0") == "up", 20, what="probe up")
        stack.ipsec.drop(1, "blackhole")
        routed(stack, "ipsec1", 100, 15)
        assert probe(stack, "ipsec0") == "down"
        assert stack.ipsec.established(1) and verbs(stack, 1, t0) == []
    finally:
        stack.ipsec.drop(1, None)
        stack.config.write_text(cfg)
        restart_daemon(stack)
    back_to_normal(stack)


def probe(stack: ipsec.Stack, dev: str) -> object:
    try:
        return tunnel_state(stack, dev)["probe"]["state"]  # type: ignore[index]
    except (subprocess.CalledProcessError, StopIteration, KeyError):
        return None  # the daemon is starting
