"""vtibgp doctor inside a lab gateway namespace (sysctls are per network namespace), set up
right and wrong."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from vtibgp.config.schema import load
from vtibgp.exabgp.render import render
from vtibgp.lab import parts as harness

SCRIPT = """
import dataclasses, json, sys
from vtibgp.tools import doctor
from vtibgp.config.schema import load
out = doctor.run_checks(load(sys.argv[1]), exabgp_conf=sys.argv[2])
print(json.dumps([dataclasses.asdict(f) for f in out]))
"""
# these two look at every process on the host (other labs' ExaBGP, a host's FRR): not ours
HOST_WIDE = {"capabilities", "protocol"}


def setup(topo: harness.Topology, tmp_path: Path) -> tuple[Path, Path]:
    conf = tmp_path / "vtibgp.yaml"
    conf.write_text(yaml.safe_dump({
        "peers": [{"address": t.aws_v4, "interface": t.gw_dev} for t in topo.tunnels.values()],
        "kernel": {"table": 100},
    }))
    exa = tmp_path / "exabgp.conf"
    exa.write_text(render(load(conf), plugin_command="/usr/local/bin/vtibgp run", local_as=65000))
    settings = ["net.ipv4.conf.all.rp_filter=0"]
    for t in topo.tunnels.values():
        d = t.gw_dev
        settings += [f"net.ipv4.conf.{d}.{k}" for k in
                     ("disable_policy=1", "rp_filter=2", "forwarding=1", "disable_xfrm=0")]
    topo.run("gw", "sysctl", "-qw", *settings)
    for t in topo.tunnels.values():
        topo.ip("gw", "link", "set", "dev", t.gw_dev, "mtu", "1436")
    return conf, exa


def doctor_in(topo: harness.Topology, conf: Path, exa: Path) -> list[dict[str, str]]:
    res = topo.run("gw", sys.executable, "-c", SCRIPT, str(conf), str(exa))
    found: list[dict[str, str]] = json.loads(res.stdout)
    return found


def errors(found: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(f["check"], f["subject"]) for f in found
            if f["level"] == "error" and f["check"] not in HOST_WIDE}


def test_doctor_right_and_wrong(topology: harness.Topology, tmp_path: Path) -> None:
    conf, exa = setup(topology, tmp_path)
    found = doctor_in(topology, conf, exa)
    assert errors(found) == set(), found
    checks = {(f["check"], f["subject"]) for f in found if f["level"] == "ok"}
    for dev in ("vti01", "vti02"):
        for check in ("address", "disable_xfrm", "disable_policy", "rp_filter", "forwarding",
                      "mtu"):
            assert (check, dev) in checks
    assert ("metrics", "127.0.0.1:10179") in checks
    assert ("exabgp", "169.254.10.1") in checks

    # wrong: encryption off on vti01, strict rp_filter on vti02, then vti02 gone
    topology.run("gw", "sysctl", "-qw", "net.ipv4.conf.vti01.disable_xfrm=1",
                 "net.ipv4.conf.vti02.rp_filter=1")
    assert errors(doctor_in(topology, conf, exa)) == {("disable_xfrm", "vti01"),
                                                      ("rp_filter", "vti02")}
    topology.delete_link("vti02")
    assert errors(doctor_in(topology, conf, exa)) == {
        ("disable_xfrm", "vti01"),
        ("device", "vti02"),
        ("exabgp", "169.254.11.1"),  # its local-address is on no device now
    }
    # all=1 beside vti01=2 stays loose (the kernel takes the max); beside vti01=0 it is strict
    topology.run("gw", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
    assert ("rp_filter", "vti01") not in errors(doctor_in(topology, conf, exa))
    topology.run("gw", "sysctl", "-qw", "net.ipv4.conf.vti01.rp_filter=0")
    assert ("rp_filter", "vti01") in errors(doctor_in(topology, conf, exa))
