"""vtibgp.tools.swanctl and `aws-import --ike strongswan`: the strongSwan files, checked by
strongSwan's own parser (swanctl --load-all into a charon in a throw-away namespace)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vtibgp.tools import aws_import as aws
from vtibgp.tools import swanctl
from vtibgp.tools.doctor import IpsecFiles, find_liveness, parse_settings

DATA = Path(__file__).resolve().parents[1] / "data" / "aws"
PLUGIN = f"{sys.executable} -m vtibgp run --config /etc/vtibgp/vtibgp.yaml"


def vpn(name: str = "valid.xml") -> aws.VpnConnection:
    return aws.parse_vpn((DATA / name).read_text())


def children(text: str) -> dict[str, dict[str, object]]:
    conns = parse_settings(text)["connections"]
    assert isinstance(conns, dict)
    out = {}
    for name, conn in conns.items():
        kids = conn["children"]
        assert list(kids) == [name]  # the CHILD_SA is named as its connection
        out[name] = {**conn, **kids[name]}
    return out


def test_one_connection_per_tunnel_with_aws_values() -> None:
    v = vpn()
    text = swanctl.swanctl_conf(v, ("vti01", "vti02"), (100, 200))
    conns = children(text)
    names = [aws.connection_name(v, t) for t in v.tunnels]
    assert list(conns) == names
    delay, _ = aws.dpd_timers(v.tunnels[0])
    for t, (_name, c), dev, mark in zip(v.tunnels, conns.items(), ("vti01", "vti02"),
                                       ("100", "200"), strict=True):
        assert c["remote_addrs"] == t.vgw_outside
        assert c["local"] == {"auth": "psk", "id": t.cgw_outside}
        assert c["remote"] == {"auth": "psk", "id": t.vgw_outside}
        assert c["dpd_delay"] == f"{delay}s"
        assert (c["local_ts"], c["remote_ts"]) == ("0.0.0.0/0", "0.0.0.0/0")
        assert (c["mark_in"], c["mark_out"]) == (mark, mark)
        assert "if_id_in" not in c
        assert (c["keyingtries"], c["mobike"], c["dpd_action"]) == ("0", "no", "restart")
        assert c["start_action"] == "start"
        assert c["updown"] == (f"VTIBGP_MTU={aws.DEFAULT_MTU} {swanctl.DEFAULT_UPDOWN} "
                               f"{dev} {t.cgw_inside}/30 {mark}")
        ike_life, _ = aws.lifetimes(t)
        assert int(str(c["rekey_time"]).rstrip("s")) < ike_life
    secrets = parse_settings(text)["secrets"]
    assert secrets == {f"ike-{n}": {"id-local": t.cgw_outside, "id-remote": t.vgw_outside,
                                    "secret": t.psk}
                       for n, t in zip(names, v.tunnels, strict=True)}


def test_xfrm_devices_use_if_id() -> None:
    """The if_id is the N of the device ipsecN, as libreswan's ipsec-interface=N: the same
    devices whichever IKE daemon; the marks are for VTIs only."""
    c = children(swanctl.swanctl_conf(vpn(), ("ipsec3", "ipsec8"), (7, 9), device="xfrm"))
    first, second = c.values()
    assert (first["if_id_in"], first["if_id_out"], second["if_id_in"]) == ("3", "3", "8")
    assert "mark_in" not in first
    assert str(second["updown"]).startswith("VTIBGP_DEVICE_KIND=xfrm ")
    assert " ipsec8 " in str(second["updown"]) and str(second["updown"]).endswith(" 8")
    with pytest.raises(aws.AwsImportError, match="devices: with device xfrm"):
        swanctl.swanctl_conf(vpn(), ("vti01", "vti02"), (7, 9), device="xfrm")


def test_a_subset_of_the_tunnels_and_no_secrets() -> None:
    v = vpn()
    text = swanctl.swanctl_conf(v, ("a", "b"), (1, 2), tunnels=(2,), secrets=False)
    assert list(children(text)) == [aws.connection_name(v, v.tunnels[1])]
    assert "secrets" not in parse_settings(text)


def test_ipv6_inside_has_v6_selectors() -> None:
    c = next(iter(children(swanctl.swanctl_conf(vpn("ipv6-inside.xml"), ("a", "b"),
                                                (1, 2))).values()))
    assert (c["local_ts"], c["remote_ts"]) == ("::/0", "::/0")


@pytest.mark.parametrize(("kw", "where"), [
    ({"device": "gre"}, "device: expected one of vti, xfrm"),
    ({"updown": "relative/path"}, "updown: expected an absolute path"),
    ({"updown": "/bin/x'y"}, "updown: expected an absolute path"),
    ({"tunnels": (3,)}, "tunnels: expected 1 and/or 2"),
])
def test_bad_arguments_are_named(kw: dict[str, object], where: str) -> None:
    with pytest.raises(aws.AwsImportError, match=re.escape(where)):
        swanctl.swanctl_conf(vpn(), ("a", "b"), (1, 2), **kw)  # type: ignore[arg-type]


def test_same_marks_are_refused() -> None:
    with pytest.raises(aws.AwsImportError, match="marks"):
        swanctl.swanctl_conf(vpn(), ("a", "b"), (5, 5))


def test_both_writers_configure_the_same_suite() -> None:
    """The VpnConnection's proposals (libreswan's spelling, ipsec.conf's ike=/esp=) are what
    swanctl.conf gets, in strongSwan's."""
    v = vpn()
    conf = aws.ipsec_conf(v, ("a", "b"), (1, 2), "/x")
    assert f"ike={v.ike_proposal}" in conf and f"esp={v.esp_proposal}" in conf
    c = next(iter(children(swanctl.swanctl_conf(v, ("a", "b"), (1, 2))).values()))
    assert c["proposals"] == swanctl.proposal(v.ike_proposal, ike=True)
    assert c["esp_proposals"] == swanctl.proposal(v.esp_proposal, ike=False)


@pytest.mark.parametrize(("libreswan", "ike", "strongswan"), [
    ("aes256-sha2_256;modp2048", True, "aes256-sha256-modp2048"),
    ("aes128-sha1;dh14", False, "aes128-sha1-modp2048"),
    ("aes_gcm256-sha2_256;dh19", True, "aes256gcm16-prfsha256-ecp256"),
    ("aes_gcm256-null;dh20", False, "aes256gcm16-ecp384"),
    ("aes_gcm192;modp2048", False, "aes192gcm16-modp2048"),  # Azure's GCMAES192 + PFS2048
    ("aes256-sha2_384;modp2048,aes128-sha1;dh2", True,
     "aes256-sha384-modp2048,aes128-sha1-modp1024"),
])
def test_proposals_in_strongswans_spelling(libreswan: str, ike: bool, strongswan: str) -> None:
    assert swanctl.proposal(libreswan, ike=ike) == strongswan


def test_an_unknown_algorithm_is_named() -> None:
    with pytest.raises(aws.AwsImportError, match="'3des-md5;modp1024'"):
        swanctl.proposal("3des-md5;modp1024", ike=True)


def test_retransmit_schedule_gives_up_at_the_dpd_timeout() -> None:
    v = vpn()
    _, give_up = aws.dpd_timers(v.tunnels[0])
    charon = parse_settings(swanctl.strongswan_conf(v))["charon"]
    assert isinstance(charon, dict)
    timeout, base = float(charon["retransmit_timeout"]), float(charon["retransmit_base"])
    tries = int(charon["retransmit_tries"])
    total = sum(timeout * base ** n for n in range(tries + 1))
    assert abs(total - give_up) < 0.05 * give_up
    assert charon["install_routes"] == "no"
    with pytest.raises(ValueError):
        swanctl.retransmit_timeout(0)


def test_import_writes_the_strongswan_files(tmp_path: Path) -> None:
    out = tmp_path / "gw"
    paths = aws.import_vpn((DATA / "valid.xml").read_text(), out, plugin_command=PLUGIN,
                           ike="strongswan")
    names = sorted(p.name for p in paths)
    assert names == sorted(aws.files("strongswan"))
    assert "ipsec.conf" not in names and "swanctl.conf" in names
    assert stat.S_IMODE(os.stat(out / "swanctl.conf").st_mode) == 0o600
    assert swanctl.DEFAULT_UPDOWN in (out / "swanctl.conf").read_text()
    with pytest.raises(aws.AwsImportError, match="ike: expected one of"):
        aws.import_vpn((DATA / "valid.xml").read_text(), tmp_path / "x", ike="racoon")
    # doctor reads what the writer wrote: DPD fires before the hold time
    found = find_liveness(IpsecFiles((), (str(out / "swanctl.conf"),),
                                    (str(out / "strongswan-vtibgp.conf"),)))
    v = vpn()
    for t in v.tunnels:
        live = found[aws.connection_name(v, t)]
        assert live.seconds is not None and live.seconds < t.hold_time


# ---------------------------------------------------------------- strongSwan's own parser

CHARON = "/usr/lib/ipsec/charon"


def _charon_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root (charon in a throw-away network namespace)"
    if not Path(CHARON).is_file() or shutil.which("swanctl") is None:
        return "strongSwan (charon, swanctl) is not installed; CI installs it"
    return None


@pytest.mark.skipif(_charon_tools() is not None
                    and not os.environ.get("VTIBGP_REQUIRE_INTEGRATION"),
                    reason=str(_charon_tools()))  # (in CI: fails instead)
def test_swanctl_loads_the_generated_file(tmp_path: Path) -> None:
    """swanctl --load-all of aws-import's swanctl.conf into a real charon (kernel-libipsec,
    in a network namespace of its own, /run private): both connections and both keys load;
    a broken file is refused, so the check can fail."""
    from vtibgp.lab import ipsec, parts

    out = tmp_path / "gw"
    aws.import_vpn((DATA / "valid.xml").read_text(), out, plugin_command=PLUGIN,
                   ike="strongswan")
    tag = "u" + os.urandom(3).hex()
    ns = f"{parts.NS_PREFIX}-{tag}-swan"
    marker = parts._write_marker(tag)
    charon: ipsec.Charon | None = None
    try:
        parts._cmd(["ip", "netns", "add", ns])
        work = Path(f"/tmp/{ns}")  # a short path: the vici socket's name is limited
        charon = ipsec.Charon(ns, work, ports=(500, 4500), table=220, give_up=5.0,
                              swanctl_text="connections {\n}\n").start()
        res = charon.swanctl("--load-all", "--file", str(out / "swanctl.conf"))
        assert "loaded connection 'aws-vpn-0123456789abcdef0-tunnel-1'" in res
        assert "successfully loaded 2 connections, 0 unloaded" in res
        assert "loaded ike secret 'ike-aws-vpn-0123456789abcdef0-tunnel-2'" in res
        listed = charon.swanctl("--list-conns")
        assert "rekeying every 25920s, dpd delay 5s" in listed
        # the other clouds' proposals (Azure's policy, GCP's) in strongSwan's spelling too
        from test_azure_import import parse as azure
        from test_gcp_import import parse as gcp
        for cloud, v in (("azure", azure()), ("gcp", gcp())):
            f = tmp_path / f"{cloud}.conf"
            f.write_text(swanctl.swanctl_conf(v, ("ipsec1", "ipsec2"), (1, 2)))
            res = charon.swanctl("--load-all", "--file", str(f))
            assert "successfully loaded 2 connections" in res, (cloud, res)
        broken = tmp_path / "broken.conf"
        broken.write_text((out / "swanctl.conf").read_text().replace(
            "dpd_action = restart", "dpd_action = sometimes", 1))
        with pytest.raises(parts.HarnessError, match="dpd_action"):
            charon.swanctl("--load-all", "--file", str(broken))
    finally:
        if charon is not None:
            charon.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        marker.unlink(missing_ok=True)
        shutil.rmtree(f"/tmp/{ns}", ignore_errors=True)


def test_doctor_skips_the_xfrm_sysctls_on_a_tun_device(tmp_path: Path) -> None:
    """A kernel-libipsec TUN (ipsecN) has no kernel XFRM: no false disable_policy error; the
    sysctls that still matter are checked. A VTI (no tun_flags) keeps the XFRM checks."""
    from vtibgp.tools.doctor import check_sysctls, is_tun

    proc = tmp_path / "proc"
    for dev, values in (("ipsec0", (0, 0, 1, 0)), ("vti01", (0, 0, 1, 0))):
        conf = proc / "sys/net/ipv4/conf" / dev
        conf.mkdir(parents=True)
        for key, v in zip(("disable_xfrm", "disable_policy", "forwarding", "rp_filter"),
                          values, strict=True):
            (conf / key).write_text(f"{v}\n")
    (proc / "sys/net/ipv4/conf/all").mkdir()
    (proc / "sys/net/ipv4/conf/all/rp_filter").write_text("0\n")
    (tmp_path / "sys/class/net/ipsec0").mkdir(parents=True)
    (tmp_path / "sys/class/net/ipsec0/tun_flags").write_text("0x1001\n")
    assert is_tun("ipsec0", str(proc)) and not is_tun("vti01", str(proc))
    tun = {f.check: f.level for f in check_sysctls("ipsec0", str(proc), tun=True)}
    assert "disable_policy" not in tun and "disable_xfrm" not in tun
    assert tun["device"] == "ok" and tun["forwarding"] == "ok"
    vti = {f.check: f.level for f in check_sysctls("vti01", str(proc))}
    assert vti["disable_policy"] == "error"


@pytest.mark.parametrize("kind", ["vti", "xfrm"])
def test_strongswan_wrapper_creates_the_device_of_its_kind(tmp_path: Path, kind: str) -> None:
    """config/strongswan/strongswan-updown.sh on up-client with the device missing: a VTI
    keyed by the mark (disable_policy set), or with VTIBGP_DEVICE_KIND=xfrm an XFRM
    interface with the if_id (policy checks left on); then vtibgp is told."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "config/strongswan/strongswan-updown.sh"
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls.log"
    for name, body in (("ip", f'[ "$1 $2" = "link show" ] && exit 1\necho "ip $*" >> {log}'),
                       ("sysctl", f'echo "sysctl $*" >> {log}'),
                       ("vtibgp", f'echo "vtibgp $*" >> {log}')):
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "VTIBGP": str(bin_ / "vtibgp"),
           "PLUTO_VERB": "up-client", "PLUTO_ME": "192.0.2.1", "PLUTO_PEER": "198.51.100.1",
           **({"VTIBGP_DEVICE_KIND": "xfrm"} if kind == "xfrm" else {})}
    r = subprocess.run(["sh", str(script), "ipsec8", "169.254.10.2/30", "8"], env=env,
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    create = ("ip link add ipsec8 type xfrm if_id 8" if kind == "xfrm" else
              "ip link add ipsec8 type vti local 192.0.2.1 remote 198.51.100.1 key 8")
    assert calls[0] == create
    assert any("disable_policy" in c for c in calls) == (kind == "vti")
    assert "ip addr add 169.254.10.2/30 dev ipsec8" in calls
    assert calls[-1].startswith("vtibgp updown --device ipsec8")
