"""Config loading: the shipped example is valid, and every error names file, key and what is
allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vtibgp.cli import main
from vtibgp.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "vtibgp.yaml"


def test_example_config_loads_with_documented_values() -> None:
    cfg = load(EXAMPLE)
    assert cfg.table == 254 and cfg.protocol == 186 and cfg.metric == 100
    assert [p.interface for p in cfg.peers] == ["vti01", "vti02"]
    assert [p.preference for p in cfg.peers] == [100, 90]
    assert not any(p.gateway for p in cfg.peers)


def test_minimal_config_gets_defaults() -> None:
    cfg = parse({"peers": [{"address": "169.254.10.1"}]})
    assert cfg.on_exit == "withdraw" and cfg.grace_time == 60 and cfg.max_paths == 4
    assert cfg.metrics_listen == "127.0.0.1:10179"
    assert cfg.peers[0].interface is None and cfg.peers[0].families == ("ipv4 unicast",)


def test_shared_device_turns_on_gateway_automatically() -> None:
    cfg = parse(
        {
            "peers": [
                {"address": "10.9.0.1", "interface": "vti09"},
                {"address": "10.9.0.2", "interface": "vti09"},
                {"address": "10.9.0.3", "interface": "vti10"},
                {"address": "10.9.0.4", "interface": "vti10", "gateway": "no"},
            ]
        }
    )
    # vti10 is shared too: auto turns it on for .3; .4 said no explicitly
    assert [p.gateway for p in cfg.peers] == [True, True, True, False]


def test_addresses_are_canonical() -> None:
    cfg = parse({"peers": [{"address": "FD00:10:0::1"}]})
    assert cfg.peers[0].address == "fd00:10::1"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"peers": [{"address": "x"}]}, "peers[0].address: expected an IPv4 or IPv6 address"),
        ({"peers": [{"address": "10.0.0.1", "intreface": "vti01"}]},
         "peers[0].intreface: unknown key; allowed here: address, interface"),
        ({"kernel": {"metric": "high"}, "peers": []}, "kernel.metric: expected an integer"),
        ({"kernel": {"table": 255}}, "kernel.table: expected 'main'"),
        ({"kernel": {"protocol": 4}, "peers": [{"address": "10.0.0.1"}]},
         "kernel.protocol: a routing protocol id"),
        ({"kernel": {"ecmp": "yes"}}, "kernel.ecmp: expected true or false"),
        ({"startup": {"grace_time": -1}}, "startup.grace_time: expected a number"),
        ({"on_exit": "keep"}, "on_exit: expected one of withdraw, retain"),
        ({"metrics": {"listen": "localhost"}}, "metrics.listen: expected ADDRESS:PORT"),
        ({"colour": 1}, "colour: unknown key; allowed here: log_level"),
        ({"peers": [{"address": "10.0.0.1"}, {"address": "10.0.0.1"}]},
         "peers[1].address: each address once; already configured at peers[0]"),
        ({"peers": [{"address": "10.0.0.1", "interface": "a-very-long-device-name"}]},
         "peers[0].interface: expected a device name of 1-15"),
        ({"peers": [{"address": "10.0.0.1", "families": ["ipv4", "evpn"]}]},
         "peers[0].families: expected a non-empty list of ipv4, ipv6"),
        ({"peers": []}, "peers: at least one peer"),
        ([1, 2], "(top level): expected a mapping"),
        ({"peers": [{"address": "10.0.0.1"}], "tunnels": [{"device": "vti01"}]},
         "tunnels[0]: missing required key 'connection'"),
        ({"peers": [{"address": "10.0.0.1"}],
          "tunnels": [{"connection": "aws1", "peers": ["10.0.0.2"]}]},
         "tunnels[0].peers[0]: an address listed under peers:"),
        ({"tunnel": {"hold_down": "2s"}}, "tunnel.hold_down: expected a number"),
    ],
)
def test_errors_name_file_key_and_allowed(data: object, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(data, "/etc/vtibgp/vtibgp.yaml")
    msg = str(e.value)
    assert msg.startswith("/etc/vtibgp/vtibgp.yaml: "), msg
    assert needle in msg, msg


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("peers: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load(bad)


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "peer 169.254.10.1: device vti01" in capsys.readouterr().out
    bad = tmp_path / "v.yaml"
    bad.write_text(yaml.safe_dump({"peers": [{"address": "10.0.0.1", "preference": -1}]}))
    assert main(["check-config", str(bad)]) == 1
    assert "peers[0].preference: expected an integer from 0" in capsys.readouterr().err


def test_tunnels_map_connections_to_devices_and_peers() -> None:
    cfg = parse({
        "peers": [{"address": "169.254.10.1", "interface": "vti01", "vpn": "vpn-1"}],
        "tunnels": [{"connection": "aws-1", "device": "vti01", "peers": ["169.254.10.1"],
                     "teardown": True}],
        "tunnel": {"hold_down": 0.5},
    })
    t = cfg.tunnels[0]
    assert (t.connection, t.device, t.peers, t.teardown) == (
        "aws-1", "vti01", ("169.254.10.1",), True)
    assert cfg.hold_down == 0.5 and cfg.peers[0].vpn == "vpn-1"
