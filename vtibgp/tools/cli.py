"""The `vtibgp` command: run (the ExaBGP process), check-config, status, routes, updown, ..."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from vtibgp import __version__, defaults
from vtibgp.control.client import DEFAULT_SOCKET, ControlError, request
from vtibgp.control.updown import HOOK_PATH
from vtibgp.control.updown import main as updown_main

if TYPE_CHECKING:
    from vtibgp.config.schema import Config

# The config module (and YAML) is imported only by the commands that read a config. The IPsec
# daemon's hook, `vtibgp updown`, lives in vtibgp.control.updown (see `vtibgp install-hook`).

DEFAULT_CONFIG = "/etc/vtibgp/vtibgp.yaml"


def setup_logging(level: str, use_syslog: bool) -> None:
    """One line per event on stderr (ExaBGP copies the plugin's stderr into its own log)."""
    import logging
    import logging.handlers

    root = logging.getLogger("vtibgp")
    root.handlers.clear()
    root.setLevel(level.upper())
    root.propagate = False
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(logging.Formatter(f"vtibgp[{os.getpid()}] %(levelname)s %(message)s"))
    root.addHandler(err)
    if use_syslog and os.path.exists("/dev/log"):
        sl = logging.handlers.SysLogHandler(address="/dev/log")
        sl.setFormatter(logging.Formatter("vtibgp[%(process)d]: %(levelname)s %(message)s"))
        root.addHandler(sl)


def _load(path: str) -> Config | None:
    from vtibgp.config.schema import ConfigError, load

    try:
        return load(path)
    except ConfigError as e:
        print(f"vtibgp: config error: {e}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    setup_logging(args.log_level or cfg.log_level, cfg.syslog)
    if not (args.no_supervisor or args.dry_run):
        # ExaBGP's process is the relay; the daemon runs as its child (see vtibgp.shell.supervisor)
        from vtibgp.shell.supervisor import Relay, child_command

        return Relay(child_command(args.config, args.log_level)).run()
    from vtibgp.shell.supervisor import attach

    attach()  # started by the relay: die with it, never mistake its death for ExaBGP's EOF
    from vtibgp.shell.daemon import run

    return run(cfg, dry_run=args.dry_run)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    print(f"{args.config}: ok ({len(cfg.peers)} peers)")
    for p in cfg.peers:
        dev = p.interface or "(discovered)"
        gw = ", via next-hop" if p.gateway else ""
        fams = " ".join(f.split()[0] for f in p.families)
        print(f"  peer {p.address}: device {dev}{gw}, preference {p.preference}, {fams}")
    return 0


def _socket(args: argparse.Namespace) -> str | None:
    if args.socket:
        return str(args.socket)
    if args.config and os.path.exists(args.config):
        cfg = _load(args.config)
        if cfg is None:
            return None
        if cfg.control_socket is None:
            print(f"vtibgp: {args.config}: control.socket is null (no control socket)",
                  file=sys.stderr)
            return None
        return cfg.control_socket
    return DEFAULT_SOCKET


def _ask(args: argparse.Namespace, req: dict[str, Any]) -> dict[str, Any] | None:
    path = _socket(args)
    if path is None:
        return None
    try:
        return request(path, req)
    except ControlError as e:
        print(f"vtibgp: {e}", file=sys.stderr)
        return None


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def cmd_status(args: argparse.Namespace) -> int:
    st = _ask(args, {"cmd": "status"})
    if st is None:
        return 1
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    r = st["routes"]
    print(f"vtibgp {st['version']}  ExaBGP API {st['exabgp_api'] or '-'}  table {st['table']}  "
          f"proto {st['protocol']}  {'synced' if st['synced'] else 'start-up sync pending'}  "
          f"{r['prefixes']} prefixes, {r['total']} routes ({r['best']} best)")
    rows = [["Peer", "State", "Since", "Device", "Usable", "Paths", "Best", "Backup",
             "Announced", "Info"]]
    for p in st["peers"]:
        told = p.get("exported") or {}
        announced = ("-" if not any(told.values()) else
                     f"{told['preferred']} preferred" if told.get("preferred") else
                     f"{told.get('less_preferred', 0)} less pref.")
        rows.append([p["peer"], p["state"], _when(p["since"]), p["device"] or "-",
                     "yes" if p["device_usable"] else "no", str(p["paths"]), str(p["best"]),
                     str(p["backup"]), announced,
                     p["description"] or ("" if p["configured"] else "(not configured)")])
    print(_table(rows))
    rows = [["Device", "Usable", "Since", "Reason", "Probe", "RTT", "Best", "Backup"]]
    for d in st["devices"]:
        probe = d.get("probe") or {"state": "off"}
        rtt = probe.get("rtt")
        rows.append([d["device"], "yes" if d["usable"] else "no", _when(d["since"]),
                     d["reason"] or "-",
                     probe["state"] + (f" {probe['target']}" if probe.get("target") else ""),
                     f"{rtt * 1000:.1f} ms" if isinstance(rtt, float) else "-",
                     str(d["best"]), str(d["backup"])])
    print()
    print(_table(rows))
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    import ipaddress

    req: dict[str, Any] = {"cmd": "routes"}
    if args.prefix:
        try:
            req["prefix"] = str(ipaddress.ip_network(args.prefix))
        except ValueError:
            print(f"vtibgp: not a prefix: {args.prefix!r}", file=sys.stderr)
            return 2
    table = _ask(args, req)
    if table is None:
        return 1
    if args.json:
        print(json.dumps(table, indent=2, sort_keys=True))
        return 0
    for entry in table["prefixes"]:
        print(entry["prefix"])
        if not entry["paths"]:
            print("  (no paths)")
        for p in entry["paths"]:
            path = " ".join(map(str, p["as_path"])) + (
                " {" + ",".join(map(str, p["as_set"])) + "}" if p["as_set"] else "")
            metric = f"metric {p['metric']}" if p["metric"] is not None else ""
            lp = p["local_pref"] if p["local_pref"] is not None else "-"
            print(f"  {p['role']:<13} {metric:<11} via {p['peer']} dev {p['device'] or '-'}  "
                  f"[{path}] origin {('igp', 'egp', 'incomplete')[p['origin']]} "
                  f"med {p['med']} local-pref {lp}")
        for k in entry["kernel"]:
            hops = ", ".join(d + (f" via {g}" if g else "") for d, g in k["nexthops"])
            print(f"  kernel: metric {k['metric']} dev {hops}"
                  + ("  (from an earlier run, unconfirmed)" if k["stale"] else ""))
    return 0


def cmd_install_hook(args: argparse.Namespace) -> int:
    """Write the lean updown hook (vtibgp.control.updown.hook_script) for this Python and vtibgp."""
    from pathlib import Path

    from vtibgp.control.updown import hook_script

    path = Path(args.path)
    package_parent = str(Path(__file__).resolve().parents[2])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(hook_script(sys.executable, package_parent))
        path.chmod(0o755)
    except OSError as e:
        print(f"vtibgp install-hook: {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {path}: `{path} updown ...` is `vtibgp updown ...`, started faster")
    return 0


def _run_import(args: argparse.Namespace, command: str, read: Any, **kw: Any) -> int:
    """Write the gateway files from what `read()` returns (AWS's XML text or a parsed
    VpnConnection), with the options _import_options added; print the paths written."""
    from vtibgp.exabgp.render import ExabgpConfigError, plugin_command
    from vtibgp.tools.aws_import import AwsImportError, import_vpn

    try:
        devices = tuple(args.devices) if args.devices else None
        paths = import_vpn(read(), args.out, devices=devices, device=args.device,
                           table=int(args.table) if args.table.isdigit() else args.table,
                           overwrite=args.force,
                           plugin_command=plugin_command(args.vtibgp, args.config_path),
                           updown=args.updown, marks=tuple(args.marks), mtu=args.mtu,
                           prefer_tunnel=args.prefer_tunnel, router_id=args.router_id,
                           announce=tuple(args.announce), ike=args.ike, **kw)
    except (OSError, AwsImportError, ExabgpConfigError) as e:
        print(f"vtibgp: {command}: {e}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_aws_import(args: argparse.Namespace) -> int:
    def read() -> str:
        with open(args.xml, encoding="utf-8") as f:
            return f.read()

    return _run_import(args, "aws-import", read, our_asn=args.our_asn, region=args.region)


def cmd_azure_import(args: argparse.Namespace) -> int:
    from vtibgp.tools.aws_import import VpnConnection
    from vtibgp.tools.azure_import import load_json, parse_azure, read_psk_file

    def read() -> VpnConnection:
        gname, gateway = load_json(args.gateway)
        cname, connection = load_json(args.connection)
        psks = read_psk_file(args.psk_file, 2) if args.psk_file else None
        return parse_azure(gateway, connection, our_asn=args.our_asn,
                           our_outside=args.our_outside, psks=psks, gateway_name=gname,
                           connection_name=cname, name=args.name)

    return _run_import(args, "azure-import", read)


def cmd_gcp_import(args: argparse.Namespace) -> int:
    from vtibgp.tools.aws_import import VpnConnection
    from vtibgp.tools.azure_import import load_json, read_psk_file
    from vtibgp.tools.gcp_import import parse_gcp

    def read() -> VpnConnection:
        rname, router = load_json(args.router)
        tunnels = [load_json(t) for t in args.tunnel]
        gname, gateway = load_json(args.gateway)
        return parse_gcp(router, [d for _, d in tunnels], gateway,
                         psks=read_psk_file(args.psk_file, 2), router_name=rname,
                         tunnel_names=[n for n, _ in tunnels], gateway_name=gname)

    return _run_import(args, "gcp-import", read)


def cmd_exabgp_config(args: argparse.Namespace) -> int:
    from vtibgp.exabgp.render import ExabgpConfigError, plugin_command, render

    cfg = _load(args.config)
    if cfg is None:
        return 1
    try:
        command = plugin_command(args.vtibgp, args.config_path or os.path.abspath(args.config))
        print(render(cfg, plugin_command=command, local_as=args.local_as, peer_as=args.peer_as,
                     hold_time=args.hold_time, router_id=args.router_id), end="")
    except ExabgpConfigError as e:
        print(f"vtibgp: exabgp-config: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from vtibgp.tools.doctor import exit_status, format, run_checks

    cfg = _load(args.config)
    if cfg is None:
        return 1
    from vtibgp.tools.doctor import IpsecFiles

    files = IpsecFiles.under("/etc")
    files = IpsecFiles(tuple(args.ipsec_conf or files.ipsec_conf),
                       tuple(args.swanctl_conf or files.swanctl_conf),
                       tuple(args.strongswan_conf or files.strongswan_conf))
    findings = run_checks(cfg, exabgp_conf=args.exabgp_conf, ipsec_files=files)
    print(format(findings))
    return exit_status(findings)


def cmd_lab(args: argparse.Namespace) -> int:
    from vtibgp.lab.cli import dispatch

    return dispatch(args)


def _import_options(imp: argparse.ArgumentParser, cloud: str, mtu: int, mtu_why: str) -> None:
    """The options aws-import, azure-import and gcp-import share (the writers are the same)."""
    imp.add_argument("--out", required=True, help="directory to write into")
    imp.add_argument("--device", choices=["vti", "xfrm"], default="vti",
                     help="tunnel device kind: vti (VTI devices selected by --marks) or xfrm "
                     "(XFRM interfaces: libreswan's ipsec-interface=N makes device ipsecN, "
                     "no marks; kernel 4.19 or later) (default: %(default)s)")
    imp.add_argument("--devices", nargs=2, metavar="DEV",
                     help="tunnel device names for tunnels 1 and 2, at most 15 characters "
                     "each (default: vti01 vti02; with --device xfrm ipsec1 ipsec2, and "
                     "libreswan needs ipsecN names)")
    imp.add_argument("--table", default="main",
                     help="kernel routing table for the BGP routes: main or a number "
                     "(default: %(default)s)")
    imp.add_argument("--marks", nargs=2, type=int, default=[100, 200], metavar="MARK",
                     help="XFRM marks (the VTI keys) of tunnels 1 and 2, unique on this host "
                     "(default: %(default)s; not used by libreswan with --device xfrm, whose "
                     "ipsecN device names give the interface ids)")
    imp.add_argument("--mtu", type=int, default=mtu,
                     help="tunnel device MTU, 1280-1446; the TCP MSS clamp in "
                     f"nftables-mss.nft follows from it (default: %(default)s, {mtu_why})")
    imp.add_argument("--prefer-tunnel", type=int, choices=[1, 2],
                     help="give this tunnel a higher peers[].preference, so it is used "
                     f"whenever it is up even when {cloud}'s MED points at the other "
                     "(default: equal preferences, the MED decides)")
    imp.add_argument("--router-id", help="BGP router id (default: our first IPv4 inside "
                     "address, or the outside one for IPv6-inside VPNs)")
    imp.add_argument("--vtibgp", default="/usr/local/bin/vtibgp",
                     help="the vtibgp command as ExaBGP will run it on the gateway "
                     "(default: %(default)s)")
    imp.add_argument("--config-path", default=DEFAULT_CONFIG,
                     help="where the written vtibgp.yaml will be installed, for exabgp.conf's "
                     "process line (default: %(default)s)")
    imp.add_argument("--ike", choices=["libreswan", "strongswan"], default="libreswan",
                     help="the IKE daemon to write for: libreswan (ipsec.conf, ipsec.secrets) "
                     "or strongswan (swanctl.conf with the keys, mode 0600, and "
                     "strongswan-vtibgp.conf for /etc/strongswan.d/) (default: %(default)s)")
    imp.add_argument("--updown", default="/usr/local/libexec/vtibgp/vtibgp-updown.sh",
                     help="the installed updown wrapper: config/libreswan/vtibgp-updown.sh "
                     "for leftupdown= (default: %(default)s), with --ike strongswan "
                     "config/strongswan/strongswan-updown.sh for updown= (default: "
                     "/usr/local/libexec/vtibgp/strongswan-updown.sh)")
    imp.add_argument("--announce", action="append", default=[], metavar="PREFIX",
                     help=f"one of the gateway's own networks to announce to {cloud} over "
                     f"both tunnels, steered so {cloud} returns through the tunnel vtibgp uses "
                     "(export.networks; repeatable)")
    imp.add_argument("--force", action="store_true", help="overwrite existing files")


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["updown"]:  # the IPsec daemon's hook: its own lean parser
        return updown_main(args_in[1:])
    ap = argparse.ArgumentParser(prog="vtibgp", description=__doc__)
    ap.add_argument("--version", action="version", version=f"vtibgp {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run as ExaBGP's process (reads ExaBGP JSON on stdin)")
    run.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    run.add_argument("--dry-run", action="store_true",
                     help="print the kernel operations instead of making them (no root needed)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--no-supervisor", action="store_true",
                     help="run the daemon itself as ExaBGP's process, without the relay that "
                     "keeps ExaBGP's sessions through a daemon crash (README, 'Crashes')")
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="validate a config file and exit")
    chk.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    chk.set_defaults(func=cmd_check_config)

    for name, func, text in (("status", cmd_status, "peers and tunnels of the running daemon"),
                             ("routes", cmd_routes, "paths per prefix and what is installed")):
        sp = sub.add_parser(name, help=text)
        if name == "routes":
            sp.add_argument("prefix", nargs="?", help="one prefix (exact)")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.add_argument("--socket", help=f"control socket (default: from --config, else "
                        f"{DEFAULT_SOCKET})")
        sp.add_argument("--config", "-c", default=DEFAULT_CONFIG)
        sp.set_defaults(func=func)

    # (`vtibgp updown` is taken by main() before argparse; listed here for --help)
    sub.add_parser("updown", help="IPsec updown hook: tell vtibgp a tunnel is up/down "
                   "(reads PLUTO_VERB, PLUTO_CONNECTION, VTI_IFACE, PLUTO_PEER; "
                   "`vtibgp updown --help`)")
    hook = sub.add_parser("install-hook", help="write `vtibgp updown` as a script that starts "
                          "in a fraction of the time, for the IPsec daemon to run")
    hook.add_argument("path", nargs="?", default=HOOK_PATH, help="where (default: %(default)s)")
    hook.set_defaults(func=cmd_install_hook)

    imp = sub.add_parser("aws-import", help="write vtibgp, ExaBGP, libreswan, sysctl and "
                         "nftables (MSS clamp) configs from AWS's VPN connection XML")
    imp.add_argument("xml", help="the CustomerGatewayConfiguration XML")
    imp.add_argument("--our-asn", type=int, help="override the customer gateway ASN")
    imp.add_argument("--region", help="AWS region (some ASNs are reserved per region)")
    _import_options(imp, "AWS", 1436, "AWS's sample")
    imp.set_defaults(func=cmd_aws_import)

    az = sub.add_parser("azure-import", help="the same files from the JSON of an Azure "
                        "active-active VPN gateway and its connection (az ... show)")
    az.add_argument("gateway", help="`az network vnet-gateway show -g RG -n GW` output "
                    "(bgpSettings: ASN, per-instance APIPA BGP and tunnel IP addresses)")
    az.add_argument("connection", help="`az network vpn-connection show -g RG -n CONN` "
                    "output (enableBgp, connectionProtocol, ipsecPolicies, dpdTimeoutSeconds, "
                    "gatewayCustomBgpIpAddresses)")
    az.add_argument("--our-asn", type=int, required=True,
                    help="this gateway's ASN (the local network gateway's BGP ASN)")
    az.add_argument("--our-outside", required=True, metavar="IP",
                    help="this gateway's public IPv4 address (the local network gateway's IP "
                    "address; leftid and the keys' selector)")
    az.add_argument("--psk-file", metavar="FILE",
                    help="the connection's shared key (Azure's JSON does not show it): one "
                    "line, or one per tunnel; the file must be mode 0600 or stricter")
    az.add_argument("--name", help="the name the IPsec connections are called after "
                    "(default: the connection's name; letters, digits and -)")
    _import_options(az, "Azure", 1400, "Azure's recommended MTU")
    az.set_defaults(func=cmd_azure_import)

    gcp = sub.add_parser("gcp-import", help="the same files from the JSON of a Google Cloud "
                         "HA VPN: Cloud Router, its two tunnels and the HA VPN gateway")
    gcp.add_argument("router", help="`gcloud compute routers describe ROUTER --format=json` "
                     "output (bgp.asn, interfaces, bgpPeers)")
    gcp.add_argument("--tunnel", action="append", required=True, metavar="FILE",
                     help="`gcloud compute vpn-tunnels describe TUNNEL --format=json` output; "
                     "twice, tunnel 1 then tunnel 2")
    gcp.add_argument("--gateway", required=True, metavar="FILE",
                     help="`gcloud compute vpn-gateways describe GATEWAY --format=json` output "
                     "(Google's public IP of each interface)")
    gcp.add_argument("--psk-file", required=True, metavar="FILE",
                     help="the tunnels' shared secrets (gcloud shows only a hash): one line "
                     "per tunnel in --tunnel order, or one for both; mode 0600 or stricter")
    _import_options(gcp, "Google Cloud", 1436, "as for AWS")
    gcp.set_defaults(func=cmd_gcp_import)

    exa = sub.add_parser("exabgp-config", help="render ExaBGP's config from vtibgp.yaml")
    exa.add_argument("config", nargs="?", default=DEFAULT_CONFIG,
                     help="the vtibgp.yaml to render from (default: %(default)s)")
    exa.add_argument("--local-as", type=int, required=True, help="our (customer gateway) ASN")
    exa.add_argument("--peer-as", type=int, default=defaults.AWS_ASN,
                     help="the peers' ASN (default: %(default)s, AWS's VGW default)")
    exa.add_argument("--hold-time", type=int, default=30,
                     help="BGP hold time in seconds, 0 or 3-65535 (default: %(default)s, AWS's)")
    exa.add_argument("--router-id", help="BGP router id (default: the first IPv4 local "
                     "address)")
    exa.add_argument("--vtibgp", default="/usr/local/bin/vtibgp",
                     help="the vtibgp command as ExaBGP will run it (default: %(default)s)")
    exa.add_argument("--config-path", help="the vtibgp.yaml path the plugin will read, if not "
                     "where CONFIG is now (default: CONFIG's absolute path)")
    exa.set_defaults(func=cmd_exabgp_config)

    doc = sub.add_parser("doctor", help="check this gateway (devices, sysctls, MTU, TCP MSS "
                         "clamp, IKE dead peer detection vs BGP hold time, preferences vs MED, "
                         "ExaBGP config, privileges, metrics port); non-zero exit on any error")
    doc.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                     help="the vtibgp.yaml to check against (default: %(default)s)")
    doc.add_argument("--exabgp-conf", default=None,
                     help="ExaBGP config to compare with vtibgp.yaml's peers (also gives the "
                     "BGP hold times; else AWS's 30 s is assumed)")
    doc.add_argument("--ipsec-conf", action="append", metavar="FILE",
                     help="libreswan ipsec.conf file or glob, repeatable (default: "
                     "/etc/ipsec.conf, /etc/ipsec.d/*.conf)")
    doc.add_argument("--swanctl-conf", action="append", metavar="FILE",
                     help="strongSwan swanctl.conf file or glob, repeatable (default: "
                     "/etc/swanctl/swanctl.conf, /etc/swanctl/conf.d/*.conf)")
    doc.add_argument("--strongswan-conf", action="append", metavar="FILE",
                     help="strongswan.conf file or glob for charon.retransmit_*, repeatable "
                     "(default: /etc/strongswan.conf, /etc/strongswan.d/*.conf, "
                     "/etc/strongswan.d/charon/*.conf)")
    doc.set_defaults(func=cmd_doctor)

    lab = sub.add_parser("lab", help="the lab in network namespaces (root)")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    lab_up = lab_sub.add_parser("up", help="build the lab and leave it running (gateway and "
                                "AWS VGW namespaces, BIRD, ExaBGP + vtibgp); idempotent")
    lab_up.add_argument("--no-host-link", action="store_true",
                        help="no management veth from the host into the gateway namespace "
                        "(the metrics are then reachable only inside it)")
    lab_up.add_argument("--ipsec", choices=["veth", "strongswan"], default="veth",
                        help="the tunnels: veth pairs standing in for them (default, fast), "
                        "or real IPsec, strongSwan's charon with kernel-libipsec at both "
                        "ends (TUN devices ipsec0/ipsec1; --signal ipsec, ike)")
    lab_up.add_argument("--gateways", type=int, choices=[1, 2], default=1,
                        help="2: a second gateway with its own VPN connection to the same VPC, "
                        "and a LAN router (BIRD) peering with both (export.lan_peers): `lab "
                        "fail 1` and `lab fail 2` move the LAN's route to gateway 2")
    lab_sub.add_parser("status", help="the running lab's tunnels, routes and vtibgp status")
    lab_fail = lab_sub.add_parser("fail", help="take a tunnel down and show the failover")
    lab_fail.add_argument("tunnel", help="1 or 2 (or vti01, vti02)")
    lab_fail.add_argument("--signal", choices=defaults.LAB_SIGNALS,
                          default="link",
                          help="link: the VGW end goes down, the tunnel device loses carrier "
                          "(default); bgp: the VGW closes the BGP session; both; blackhole: "
                          "nftables at the VGW drops all the tunnel's traffic, carrier and "
                          "BGP untouched (only vtibgp's probe sees it at once; in the "
                          "--ipsec strongswan lab: its ESP only); ipsec (--ipsec strongswan "
                          "lab): its IKE and ESP dropped, DPD then down-client; ike: swanctl "
                          "--terminate")
    lab_restore = lab_sub.add_parser("restore", help="bring a failed tunnel back")
    lab_restore.add_argument("tunnel", help="1 or 2 (or vti01, vti02)")
    lab_sub.add_parser("down", help="remove every namespace, process and file of the lab")
    demo = lab_sub.add_parser("demo", help="build the lab, show failover and return, remove it")
    demo.add_argument("--pause", type=float, default=1.0, help="seconds between the steps")
    lab.set_defaults(func=cmd_lab)

    args = ap.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
