"""Config loading: the shipped example is valid, and every error names file, key and what is
allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vtibgp.config.schema import ConfigError, PeerConfig, load, parse
from vtibgp.core.model import PathAttrs
from vtibgp.core.policy import (
    MARTIANS,
    Martian,
    MaxPrefixSettings,
    PeerPolicySettings,
    Policy,
    PolicySettings,
    PrefixRule,
)
from vtibgp.tools.cli import main

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


# ---------------------------------------------------------------- import policy


def test_policy_defaults_refuse_martians_and_default_routes_only() -> None:
    cfg = parse({"peers": [{"address": "169.254.10.1"}]})
    assert cfg.policy == PolicySettings()
    p = cfg.policy
    assert p.martians == MARTIANS and p.allow_martians == () and not p.allow_default
    assert (p.max_length_ipv4, p.max_length_ipv6) == (32, 128)
    assert p.first_as_must_be_peer and p.max_as_path_length == 64
    assert p.prefix_list == () and p.protected == () and p.peers == {}
    example = load(EXAMPLE).policy
    assert example.martians == MARTIANS and not example.allow_default
    assert [p.max_prefix.limit for p in example.peers.values()
            if p.max_prefix] == [1000, 1000]  # AWS sends at most 1,000 routes


def test_policy_section_and_per_peer_settings() -> None:
    cfg = parse({
        "policy": {
            "martians": ["192.0.2.0/24", {"prefix": "10.0.0.0/8", "exact": True}],
            "allow_martians": ["192.0.2.128/25"],
            "allow_default": False,
            "max_length": {"ipv4": 24},
            "prefix_list": [
                {"prefix": "10.66.0.0/16", "le": 32, "action": "deny"},
                {"prefix": "10.0.0.0/8", "le": 24, "action": "permit"},
                {"prefix": "FD00::/8", "ge": 48, "le": 64, "action": "permit"},
            ],
            "first_as_must_be_peer": True,
            "max_as_path_length": 32,
            "protected": ["192.168.1.0/24", "10.255.0.0/16"],
        },
        "peers": [
            {"address": "169.254.10.1", "interface": "vti01", "outside": "52.1.2.3",
             "max_prefix": {"limit": 1000, "warn_at": 0.9, "action": "teardown",
                            "restart_delay": 120},
             "policy": {"allow_default": True, "max_length": {"ipv6": 56},
                        "prefix_list": [{"prefix": "10.1.0.0/16", "le": 24,
                                         "action": "permit"}],
                        "protected": ["172.31.0.0/16"]}},
            {"address": "169.254.11.1", "outside": ["52.1.2.4", "2600:1f18::1"]},
            {"address": "169.254.12.1"},
        ],
    })
    p = cfg.policy
    assert p.martians == (Martian("192.0.2.0/24", "configured"),
                          Martian("10.0.0.0/8", "configured", covered=False))
    assert p.allow_martians == ("192.0.2.128/25",)
    assert p.max_length_ipv4 == 24 and p.max_length_ipv6 == 128
    assert p.prefix_list == (PrefixRule("10.66.0.0/16", "deny", le=32),
                             PrefixRule("10.0.0.0/8", "permit", le=24),
                             PrefixRule("fd00::/8", "permit", ge=48, le=64))
    assert p.max_as_path_length == 32 and p.protected == ("192.168.1.0/24", "10.255.0.0/16")
    assert set(p.peers) == {"169.254.10.1", "169.254.11.1"}  # .12 has nothing of its own
    one = p.peers["169.254.10.1"]
    assert one == PeerPolicySettings(
        allow_default=True, max_length_ipv6=56,
        prefix_list=(PrefixRule("10.1.0.0/16", "permit", le=24),),
        protected=("172.31.0.0/16",), outside=("52.1.2.3",),
        max_prefix=MaxPrefixSettings(1000, 0.9, "teardown", 120.0))
    assert p.peers["169.254.11.1"].outside == ("52.1.2.4", "2600:1f18::1")
    merged = p.for_peer("169.254.10.1")
    assert merged.allow_default and merged.max_length_ipv4 == 24
    assert merged.max_length_ipv6 == 56
    assert merged.protected == ("192.168.1.0/24", "10.255.0.0/16", "172.31.0.0/16")
    assert cfg.peers[0] == PeerConfig("169.254.10.1", "vti01",  # peer keys unchanged
                                      probe="169.254.10.1")  # (probed at its own address)

    pol = Policy(p)
    attrs = PathAttrs("169.254.10.1", as_path=(64512,))
    def check(peer: str, prefix: str) -> str | None:
        fam = "ipv6 unicast" if ":" in prefix else "ipv4 unicast"
        return pol.check(peer, 64512, fam, prefix, attrs)  # type: ignore[arg-type]
    assert check("169.254.10.1", "10.1.2.0/24") is None
    assert check("169.254.10.1", "10.2.0.0/16") == "prefix_list"  # the peer's list
    assert check("169.254.12.1", "10.2.0.0/16") is None
    assert check("169.254.12.1", "10.0.0.0/8") == "martian"  # exact martian
    assert check("169.254.12.1", "192.0.2.0/24") == "martian"
    assert check("169.254.12.1", "192.0.2.128/25") == "max_length"  # not a martian: allowed
    assert check("169.254.11.1", "52.1.2.0/24") == "prefix_list"  # the global list
    assert pol.max_prefix("169.254.10.1") == MaxPrefixSettings(1000, 0.9, "teardown", 120.0)
    assert pol.max_prefix("169.254.11.1") is None


def test_max_prefix_defaults() -> None:
    cfg = parse({"peers": [{"address": "169.254.10.1", "max_prefix": {"limit": 100}}]})
    assert cfg.policy.peers["169.254.10.1"].max_prefix == MaxPrefixSettings(
        limit=100, warn_at=0.8, action="stop", restart_delay=60.0)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"policy": {"colour": 1}}, "policy.colour: unknown key; allowed here: martians, "
         "allow_martians"),
        ({"policy": []}, "policy: expected a mapping of keys"),
        ({"policy": {"martians": "none"}}, "policy.martians: expected 'default' or a list"),
        ({"policy": {"martians": ["10.0.0.1/8"]}},
         "policy.martians[0]: expected a prefix such as 10.0.0.0/8"),
        ({"policy": {"martians": [{"exact": True}]}},
         "policy.martians[0]: missing required key 'prefix'"),
        ({"policy": {"allow_martians": ["10.0.0.0/8"]}},
         "policy.allow_martians[0]: a prefix overlapping a martian range"),
        ({"policy": {"allow_martians": "2001:db8::/32"}},
         "policy.allow_martians: expected a list of prefixes"),
        ({"policy": {"allow_default": "no"}}, "policy.allow_default: expected true or false"),
        ({"policy": {"max_length": {"ipv4": 33}}},
         "policy.max_length.ipv4: expected an integer from 1 to 32"),
        ({"policy": {"max_length": {"ipv5": 3}}}, "policy.max_length.ipv5: unknown key"),
        ({"policy": {"max_length": 24}}, "policy.max_length: expected a mapping with ipv4"),
        ({"policy": {"max_as_path_length": 0}},
         "policy.max_as_path_length: expected an integer from 1 to 1000"),
        ({"policy": {"protected": ["0.0.0.0/0"]}},
         "policy.protected[0]: a network narrower than /0"),
        ({"policy": {"protected": ["192.168.1.1/24"]}},
         "policy.protected[0]: expected a prefix such as 10.0.0.0/8 or fd00::/8 (no host "
         "bits set)"),
        ({"policy": {"protected": ["192.168.1.1"]}}, "policy.protected[0]: expected a prefix"),
        ({"policy": {"prefix_list": {"prefix": "10.0.0.0/8"}}},
         "policy.prefix_list: expected a list of entries"),
        ({"policy": {"prefix_list": [{"prefix": "10.0.0.0/8"}]}},
         "policy.prefix_list[0]: missing required key 'action'"),
        ({"policy": {"prefix_list": [{"prefix": "10.0.0.0/8", "action": "allow"}]}},
         "policy.prefix_list[0].action: expected one of permit, deny"),
        ({"policy": {"prefix_list": [{"prefix": "10.0.0.0/8", "action": "permit", "le": 4}]}},
         "policy.prefix_list[0].le: expected a length from 8 (the prefix's) to 32"),
        ({"policy": {"prefix_list": [{"prefix": "10.0.0.0/8", "action": "permit", "ge": 33}]}},
         "policy.prefix_list[0].ge: expected a length from 8 (the prefix's) to 32, got 33"),
        ({"policy": {"prefix_list": [{"prefix": "::/0", "action": "permit", "le": 129}]}},
         "policy.prefix_list[0].le: expected an integer from 0 to 128"),
        ({"policy": {"prefix_list": [{"prefix": "10.0.0.0/8", "action": "permit", "ge": 40}]}},
         "policy.prefix_list[0].ge: expected a length from 8 (the prefix's) to 32"),
        ({"policy": {"prefix_list": [{"prefix": "10.0.0.0/8", "action": "permit", "ge": 24,
                                      "le": 16}]}},
         "policy.prefix_list[0]: ge at most le"),
        ({"policy": {"prefix_list": [{"prefix": "10.0.0.0/8", "action": "permit", "le": 24},
                                     {"prefix": "10.1.0.0/16", "action": "deny"}]}},
         "policy.prefix_list[1]: an entry that can match; policy.prefix_list[0] before it"),
        ({"policy": {"prefix_list": [{"prefix": "10.66.0.0/16", "action": "deny", "le": 32},
                                     {"prefix": "fd00::/8", "action": "permit"}]}},
         "policy.prefix_list: at least one permit entry for IPv4"),
        ({"peers": [{"address": "10.0.0.1", "policy": {"martians": "default"}}]},
         "peers[0].policy.martians: unknown key; allowed here: allow_martians"),
        ({"peers": [{"address": "10.0.0.1", "policy": {"allow_martians": ["11.0.0.0/8"]}}]},
         "peers[0].policy.allow_martians[0]: a prefix overlapping a martian range"),
        ({"peers": [{"address": "10.0.0.1", "policy": {"prefix_list": [
            {"prefix": "10.0.0.0/8", "action": "permit", "ge": 16, "le": 8}]}}]},
         "peers[0].policy.prefix_list[0]: ge at most le"),
        ({"peers": [{"address": "10.0.0.1", "outside": "vpn.example.com"}]},
         "peers[0].outside: expected an IPv4 or IPv6 address"),
        ({"peers": [{"address": "10.0.0.1", "outside": []}]},
         "peers[0].outside: expected the tunnel's outside (public) IPsec endpoint"),
        ({"peers": [{"address": "10.0.0.1", "outside": "10.0.0.1"}]},
         "peers[0].outside: the tunnel's outside (public) endpoint, not the BGP neighbor's"),
        ({"peers": [{"address": "10.0.0.1", "max_prefix": 100}]},
         "peers[0].max_prefix: expected a mapping with at least 'limit'"),
        ({"peers": [{"address": "10.0.0.1", "max_prefix": {"warn_at": 0.5}}]},
         "peers[0].max_prefix: missing required key 'limit'"),
        ({"peers": [{"address": "10.0.0.1", "max_prefix": {"limit": 0}}]},
         "peers[0].max_prefix.limit: expected an integer from 1 to 10000000"),
        ({"peers": [{"address": "10.0.0.1", "max_prefix": {"limit": 10, "warn_at": 1.5}}]},
         "peers[0].max_prefix.warn_at: expected a fraction of the limit above 0 and at most 1"),
        ({"peers": [{"address": "10.0.0.1", "max_prefix": {"limit": 10, "warn_at": 0}}]},
         "peers[0].max_prefix.warn_at: expected a fraction"),
        ({"peers": [{"address": "10.0.0.1", "max_prefix": {"limit": 10, "action": "drop"}}]},
         "peers[0].max_prefix.action: expected one of warn, stop, teardown"),
        ({"peers": [{"address": "10.0.0.1", "max_prefix": {"limit": 10, "action": "stop",
                                                           "restart_delay": 60}}]},
         "peers[0].max_prefix.restart_delay: only with action: teardown"),
        ({"peers": [{"address": "10.0.0.1", "max_prefix": {"limit": 10, "action": "teardown",
                                                           "restart_delay": -1}}]},
         "peers[0].max_prefix.restart_delay: expected a number of seconds from 0 to 86400"),
    ],
)
def test_policy_errors_name_file_key_and_allowed(data: dict[str, object], needle: str) -> None:
    data.setdefault("peers", [{"address": "10.0.0.1"}])
    with pytest.raises(ConfigError) as e:
        parse(data, "/etc/vtibgp/vtibgp.yaml")
    msg = str(e.value)
    assert msg.startswith("/etc/vtibgp/vtibgp.yaml: "), msg
    assert needle in msg, msg


def test_metrics_tls_needs_both_readable_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    base = {"peers": [{"address": "10.0.0.1"}]}
    cfg = parse({**base, "metrics": {"tls_cert": str(cert), "tls_key": str(key)}})
    assert (cfg.metrics_tls_cert, cfg.metrics_tls_key) == (str(cert), str(key))
    with pytest.raises(ConfigError, match=r"metrics\.tls_key: tls_cert and tls_key together"):
        parse({**base, "metrics": {"tls_cert": str(cert)}})
    with pytest.raises(ConfigError, match=r"metrics\.tls_cert: expected a readable file"):
        parse({**base, "metrics": {"tls_cert": str(tmp_path / "none"), "tls_key": str(key)}})


def test_nexthop_objects_is_auto_true_or_false() -> None:
    peers = [{"address": "169.254.10.1", "interface": "vti01"}]

    def kernel(value: object) -> str:
        return parse({"peers": peers, "kernel": {"nexthop_objects": value}},
                     "t.yaml").nexthop_objects

    assert parse({"peers": peers}, "t.yaml").nexthop_objects == "auto"
    assert (kernel("auto"), kernel(True), kernel(False)) == ("auto", "on", "off")
    with pytest.raises(ConfigError) as e:
        kernel("sometimes")
    assert "t.yaml" in str(e.value) and "kernel.nexthop_objects" in str(e.value)
    assert "auto, true or false" in str(e.value)


def test_tunnel_fallback_choices() -> None:
    peers = [{"address": "169.254.10.1", "interface": "vti01"}]
    assert parse({"peers": peers}, "t.yaml").fallback == "none"
    assert parse({"peers": peers, "tunnel": {"fallback": "blackhole"}}, "t.yaml").fallback == (
        "blackhole")
    with pytest.raises(ConfigError) as e:
        parse({"peers": peers, "tunnel": {"fallback": "drop"}}, "t.yaml")
    assert "tunnel.fallback" in str(e.value) and "unreachable" in str(e.value)


def test_probe_section_and_per_peer_targets() -> None:
    cfg = parse({"peers": [{"address": "169.254.10.1", "interface": "vti01"},
                           {"address": "169.254.11.1", "interface": "vti02", "probe": False},
                           {"address": "fd00:12::1", "interface": "vti03",
                            "probe": "fd00:12::5"}],
                 "probe": {"interval": 0.1, "multiplier": 5, "up_after": 2,
                           "when_all_down": "withdraw"}}, "t.yaml")
    assert [p.probe for p in cfg.peers] == ["169.254.10.1", None, "fd00:12::5"]
    assert (cfg.probe_enabled, cfg.probe_interval, cfg.probe_multiplier, cfg.probe_up_after,
            cfg.probe_when_all_down) == (True, 0.1, 5, 2, "withdraw")
    assert parse({"peers": [{"address": "169.254.10.1"}]}).probe_enabled  # on by default
    for bad, message in (
        ({"probe": {"interval": 0.01}}, "t.yaml: probe.interval: expected a number of seconds "
                                        "from 0.05 to 10"),
        ({"probe": {"multiplier": 1}}, "t.yaml: probe.multiplier: expected an integer from 2"),
        ({"probe": {"when_all_down": "maybe"}}, "probe.when_all_down: expected one of auto, "
                                                "keep, withdraw"),
        ({"probe": {"every": 1}}, "probe.every: unknown key; allowed here: enabled, interval"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse({"peers": [{"address": "169.254.10.1"}], **bad}, "t.yaml")
    with pytest.raises(ConfigError, match=re.escape(
            "t.yaml: peers[0].probe: expected the address to send echo requests to")):
        parse({"peers": [{"address": "169.254.10.1", "probe": "vgw"}]}, "t.yaml")


def test_export_section() -> None:
    cfg = parse({"peers": [{"address": "169.254.10.1", "vpn": "vpn-1"}],
                 "export": {"networks": ["192.168.50.0/24", "10.200.0.0/16"],
                            "steering": "ecmp", "med": None, "backup_prepend": 3,
                            "local_as": 65000}}, "t.yaml")
    assert cfg.export_networks == ("192.168.50.0/24", "10.200.0.0/16")
    assert (cfg.export_steering, cfg.export_med, cfg.export_backup_med,
            cfg.export_backup_prepend, cfg.export_local_as) == ("ecmp", None, 200, 3, 65000)
    assert parse({"peers": [{"address": "169.254.10.1"}]}).export_networks == ()
    for bad, message in (
        ({"networks": ["0.0.0.0/0"]}, "t.yaml: export.networks[0]: one of this gateway's own "
                                      "networks, not a default route"),
        ({"networks": ["10.0.0.1/8"]}, "export.networks[0]: expected a prefix"),
        ({"steering": "random"}, "export.steering: expected one of symmetric, ecmp, none"),
        ({"backup_prepend": 11}, "export.backup_prepend: expected an integer from 0 to 10"),
        ({"med": -1}, "export.med: expected an integer from 0"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse({"peers": [{"address": "169.254.10.1"}], "export": bad}, "t.yaml")
