"""vtibgp.exabgp.render: the ExaBGP config rendered from vtibgp.yaml, checked by ExaBGP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vtibgp.config.schema import ConfigError, parse
from vtibgp.exabgp import render as render_mod
from vtibgp.exabgp.render import (
    ExabgpConfigError,
    Session,
    aws_local_address,
    render,
    render_api,
    render_neighbor,
)
from vtibgp.lab import parts as lab

REPO = Path(__file__).resolve().parents[2]
EXABGP = shutil.which("exabgp") or str(Path(sys.executable).parent / "exabgp")
PLUGIN = f"{sys.executable} -m vtibgp run --config /etc/vtibgp/vtibgp.yaml"


def exabgp_validate(path: Path) -> subprocess.CompletedProcess[str]:
    if not os.access(EXABGP, os.X_OK):
        pytest.skip("exabgp is not installed")
    env = {**os.environ, "exabgp.daemon.user": "root"}
    return subprocess.run([EXABGP, "validate", str(path)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def cfg(peers: list[dict[str, object]]):  # type: ignore[no-untyped-def]
    return parse({"peers": peers}, "test.yaml")


def test_example_config_renders_and_validates(tmp_path: Path) -> None:
    from vtibgp.config.schema import load

    text = render(load(REPO / "config" / "vtibgp.yaml"), plugin_command=PLUGIN, local_as=65000)
    assert "neighbor 169.254.10.1 {" in text and "local-address 169.254.10.2;" in text
    assert "neighbor 169.254.11.1 {" in text and "local-address 169.254.11.2;" in text
    assert text.count("router-id 169.254.10.2;") == 2
    assert "hold-time 30;" in text and "peer-as 64512;" in text
    assert "processes [ vtibgp ];" in text and "encoder json;" in text
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text)
    r = exabgp_validate(conf)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sessions_override_and_ipv6_family(tmp_path: Path) -> None:
    c = cfg([{"address": "10.9.0.1", "families": ["ipv4", "ipv6"], "interface": "gre1"},
             {"address": "fd00:10::1", "families": ["ipv6"]}])
    text = render(c, plugin_command=PLUGIN, local_as=4200000001, router_id="192.0.2.1",
                  sessions={"10.9.0.1": Session(local_address="10.9.0.2", peer_as=65100,
                                                hold_time=90, description="lab"),
                            "fd00:10:0::1": Session(local_address="fd00:10::2")})
    assert "family { ipv4 unicast; ipv6 unicast; }" in text
    assert "peer-as 65100;" in text and "hold-time 90;" in text
    assert "local-address fd00:10::2;" in text and 'description "lab";' in text
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text)
    r = exabgp_validate(conf)
    assert r.returncode == 0, r.stdout + r.stderr


def test_aws_local_address() -> None:
    assert aws_local_address("169.254.80.145") == "169.254.80.146"
    assert aws_local_address("fd00:0:0:10::1") == "fd00:0:0:10::2"
    assert aws_local_address("169.254.80.146") is None
    assert aws_local_address("10.0.0.1") is None


@pytest.mark.parametrize(("peers", "kwargs", "match"), [
    ([{"address": "10.0.0.1"}], {}, r"peers\[0\] \(10.0.0.1\): no local address"),
    ([{"address": "169.254.10.1"}], {"local_as": 0}, "local_as"),
    ([{"address": "169.254.10.1"}], {"hold_time": 2}, "hold_time"),
    ([{"address": "169.254.10.1"}], {"router_id": "fd00::1"}, "router_id"),
    ([{"address": "169.254.10.1"}], {"plugin_command": "vtibgp; rm -rf /"}, "plugin_command"),
    ([{"address": "169.254.10.1"}], {"sessions": {"10.1.1.1": Session()}}, "not peers"),
    ([{"address": "169.254.10.1", "description": 'a "quoted" one'}], {}, "description"),
    ([{"address": "169.254.10.1"}],
     {"sessions": {"169.254.10.1": Session(local_address="fd00::2")}}, "address family"),
    ([{"address": "fd00:10::1", "families": ["ipv6"]}], {}, "router_id"),
])
def test_errors(peers: list[dict[str, object]], kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"plugin_command": PLUGIN, "local_as": 65000, **kwargs}
    with pytest.raises(ExabgpConfigError, match=match):
        render(cfg(peers), **args)  # type: ignore[arg-type]


# -- one renderer: the lab's ExaBGP runs on the stanzas `vtibgp exabgp-config` writes

LAB_PEERS = [{"address": t.aws_v4, "families": ["ipv4", "ipv6"]} for t in lab.TUNNELS.values()]


def lab_config(tmp_path: Path, **kwargs: object) -> str:
    gw = lab.ExaBGPGateway(lab.Topology(tag="unit01"), ["/bin/true"], workdir=tmp_path,
                           **kwargs)  # type: ignore[arg-type]
    return gw.config_text()


def neighbors(text: str) -> list[str]:
    """The `neighbor ... { ... }` stanzas of a rendered config, in order."""
    return ["neighbor " + chunk.split("\n}\n")[0] + "\n}"
            for chunk in (text + "\n").split("\nneighbor ")[1:]]


def test_lab_neighbors_are_the_products(tmp_path: Path) -> None:
    product = render(cfg(LAB_PEERS), plugin_command=PLUGIN, local_as=lab.GW_ASN,
                     peer_as=lab.AWS_ASN, hold_time=lab.DEFAULT_HOLD_TIME)
    ours = lab_config(tmp_path)
    assert len(neighbors(product)) == len(lab.TUNNELS)
    assert neighbors(ours) == neighbors(product)
    block = render_api()
    assert "neighbor-changes;" in block and "receive { parsed; update; notification; }" in block
    assert product.count(block) == ours.count(block) == len(lab.TUNNELS)


def test_api_block_is_rendered_by_one_function(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Both the product and the lab get the api block from render_api: replaced, it changes
    in both, and no other api block is left (a second copy of it anywhere would fail this)."""
    calls: list[tuple[str, str]] = []

    def fake(process: str = render_mod.PROCESS_NAME, extra: str = "", *,
             receive: bool = True) -> str:
        calls.append((process, extra))
        return f"    api {{ processes [ {process} ]; }}  # fake {extra}"

    monkeypatch.setattr(render_mod, "render_api", fake)
    product = render(cfg(LAB_PEERS), plugin_command=PLUGIN, local_as=65000)
    ours = lab_config(tmp_path, process_name="rec", extra_api="send { parsed; }")
    for text, process in ((product, "vtibgp"), (ours, "rec")):
        assert text.count("# fake") == len(lab.TUNNELS), text
        assert "neighbor-changes" not in text and "receive" not in text, text
        assert f"processes [ {process} ]" in text
    assert calls == [("vtibgp", "")] * 2 + [("rec", "send { parsed; }")] * 2


def test_lab_extra_api_validates(tmp_path: Path) -> None:
    text = lab_config(tmp_path, tunnels=(1,), hold_time=9,
                      extra_api="send { parsed; update; }\nreceive { refresh; }")
    assert render_neighbor(lab.TUNNELS[1].aws_v4, router_id=lab.TUNNELS[1].gw_v4,
                           local_address=lab.TUNNELS[1].gw_v4, local_as=lab.GW_ASN,
                           peer_as=lab.AWS_ASN, hold_time=9,
                           families=("ipv4 unicast", "ipv6 unicast"),
                           extra_api="send { parsed; update; }\nreceive { refresh; }") in text
    assert ("        receive { parsed; update; notification; }\n"
            "        send { parsed; update; }\n"
            "        receive { refresh; }\n    }\n}") in text
    wrapper = tmp_path / "plugin.sh"  # ExaBGP checks that the process's program exists
    wrapper.write_text("#!/bin/sh\n")
    wrapper.chmod(0o755)
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text)
    r = exabgp_validate(conf)
    assert r.returncode == 0, r.stdout + r.stderr


# -- the command line: help texts, and the paths the user actually has

def _subparsers(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The `vtibgp` subcommand parsers, as main() builds them."""
    import argparse

    from vtibgp.tools import cli

    seen: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *a: object, **k: object) -> None:
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        cli.main(["doctor"])
    [root] = seen
    [sub] = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", ["aws-import", "exabgp-config", "doctor"])
def test_every_option_has_help(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    import argparse

    parser = _subparsers(monkeypatch)[command]
    assert isinstance(parser, argparse.ArgumentParser)
    missing = [a.option_strings or [a.dest] for a in parser._actions
               if not a.help or a.help == argparse.SUPPRESS]
    assert missing == []
    names = {o for a in parser._actions for o in a.option_strings}
    want = {"aws-import": {"--devices", "--table", "--vtibgp", "--config-path", "--mtu",
                           "--prefer-tunnel", "--marks", "--updown"},
            "exabgp-config": {"--vtibgp", "--config-path", "--hold-time", "--router-id"},
            "doctor": {"--ipsec-conf", "--swanctl-conf", "--strongswan-conf"}}[command]
    assert want <= names


def test_exabgp_config_names_the_users_paths(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from vtibgp.tools import cli

    conf = tmp_path / "vtibgp.yaml"
    conf.write_text("peers:\n  - {address: 169.254.10.1, interface: vti01}\n")
    assert cli.main(["exabgp-config", str(conf), "--local-as", "65000"]) == 0
    assert f"run /usr/local/bin/vtibgp run --config {conf};" in capsys.readouterr().out
    assert cli.main(["exabgp-config", str(conf), "--local-as", "65000", "--vtibgp",
                     "/opt/vtibgp/bin/vtibgp", "--config-path", "/srv/gw/vtibgp.yaml"]) == 0
    assert "run /opt/vtibgp/bin/vtibgp run --config /srv/gw/vtibgp.yaml;" in \
        capsys.readouterr().out
    assert cli.main(["exabgp-config", str(conf), "--local-as", "65000", "--vtibgp",
                     "vtibgp"]) == 1
    assert "vtibgp: expected an absolute path" in capsys.readouterr().err


def test_aws_import_names_the_users_paths(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from vtibgp.tools import cli

    xml = str(REPO / "tests/data/aws/valid.xml")
    assert cli.main(["aws-import", xml, "--out", str(tmp_path / "a")]) == 0
    text = (tmp_path / "a/exabgp.conf").read_text()
    assert "run /usr/local/bin/vtibgp run --config /etc/vtibgp/vtibgp.yaml;" in text
    assert cli.main(["aws-import", xml, "--out", str(tmp_path / "b"), "--vtibgp",
                     "/opt/vtibgp/bin/vtibgp", "--config-path", "/srv/gw/vtibgp.yaml",
                     "--devices", "ipsec1", "ipsec2", "--table", "100", "--mtu", "1400",
                     "--prefer-tunnel", "1", "--marks", "7", "8",
                     "--updown", "/opt/vtibgp/updown.sh"]) == 0
    text = (tmp_path / "b/exabgp.conf").read_text()
    assert "run /opt/vtibgp/bin/vtibgp run --config /srv/gw/vtibgp.yaml;" in text
    ipsec = (tmp_path / "b/ipsec.conf").read_text()
    assert 'leftupdown="VTIBGP_MTU=1400 /opt/vtibgp/updown.sh"' in ipsec
    assert "mark=7/0xffffffff" in ipsec and "vti-interface=ipsec2" in ipsec
    yml = (tmp_path / "b/vtibgp.yaml").read_text()
    assert "preference: 200" in yml and "table: 100" in yml
    capsys.readouterr()
    assert cli.main(["aws-import", xml, "--out", str(tmp_path / "c"), "--config-path",
                     "etc/vtibgp.yaml"]) == 1
    assert "config_path: expected an absolute path" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_lan_peers_are_rendered_without_reading_their_routes(tmp_path: Path) -> None:
    c = parse({"peers": [{"address": "169.254.10.1"}], "export": {"lan_peers": [
        {"address": "192.168.1.1", "peer_as": 65010, "local_address": "192.168.1.2",
         "description": "LAN router"},
        {"address": "fd00:1::1", "peer_as": 65000, "local_address": "fd00:1::2"}]}},
        "test.yaml")
    text = render(c, plugin_command=PLUGIN, local_as=65000)
    lan = text[text.index("neighbor 192.168.1.1 {"):]
    assert "local-address 192.168.1.2;" in lan and "peer-as 65010;" in lan
    assert 'description "LAN router";' in lan and "hold-time 90;" in lan
    v4, v6 = lan.split("neighbor fd00:1::1 {")
    assert "family { ipv4 unicast; }" in v4 and "family { ipv6 unicast; }" in v6
    # its state changes come to vtibgp, its UPDATEs do not (they are not used)
    assert lan.count("neighbor-changes;") == 2 and "receive" not in lan
    assert text.count("receive { parsed; update; notification; }") == 1  # the cloud peer's
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text)
    r = exabgp_validate(conf)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("lan", "match"), [
    ({"address": "192.168.1.1", "peer_as": 65010}, "missing required key 'local_address'"),
    ({"address": "192.168.1.1", "peer_as": 65010, "local_address": "fd00::2"},
     "an address of the peer's family"),
    ({"address": "169.254.10.1", "peer_as": 65010, "local_address": "169.254.10.2"},
     "not one of the cloud peers"),
    ({"address": "192.168.1.1", "peer_as": 65010, "local_address": "192.168.1.2",
      "hold": 3}, "unknown key; allowed here: address, peer_as"),
])
def test_lan_peer_errors(lan: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        parse({"peers": [{"address": "169.254.10.1"}], "export": {"lan_peers": [lan]}},
              "test.yaml")
    assert "test.yaml: export.lan_peers[0]" in str(e.value)
