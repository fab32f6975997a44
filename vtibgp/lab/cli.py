"""`vtibgp lab`: the whole thing on a machine with no AWS.

A customer gateway and a simulated AWS VGW in network namespaces, joined by two "tunnels"
(veth pairs vti01/vti02 with AWS-style inside addresses); BIRD 2 as the VGW announcing a VPC
CIDR and a few more prefixes on both tunnels, tunnel 2 made less preferred by AS-path
prepending; the real ExaBGP with vtibgp on the gateway.

Two ways to run it:

* ``lab up | status | fail N | restore N | down``: a lab that stays up between commands. Its
  namespaces are ``vtibgp-lab-gw`` / ``vtibgp-lab-aws`` and everything it writes is under
  ``/run/vtibgp-lab/`` (the state file names the daemons by PID and start time, so each
  command takes them over). Neither is the test harness's: ``vtb-<tag>-`` namespaces and
  ``/run/vtibgp-harness`` belong to :func:`lab.cleanup_stale`, which would delete a lab whose
  maker has exited. Every command holds a lock on the state directory, so two at once queue.
* ``lab demo``: build, show the failover and the return, remove, all in one run (harness
  namespaces with a random tag: it runs beside a lab that is up).

``lab up --ipsec strongswan`` builds the lasting lab with real IPsec tunnels instead
(:mod:`vtibgp.lab.ipsec`: charon with kernel-libipsec at both ends, TUN devices ipsec0/ipsec1);
the state file then also names the four charons, and ``fail`` takes ``--signal ipsec``
(IKE and ESP dropped: DPD), ``ike`` (swanctl --terminate), ``blackhole`` (ESP only) or ``bgp``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vtibgp import defaults
from vtibgp.lab import ipsec
from vtibgp.lab import parts as lab
from vtibgp.lab.gateways import NS_AWS2, NS_GW2, NS_LAN, SecondSite
from vtibgp.lab.lan import LAN_ASN

VPC = ["10.0.0.0/16", "10.1.0.0/16", "10.2.0.0/24", "fd10:100::/56"]
METRICS = defaults.METRICS_LISTEN
PREPEND = {2: 2}  # tunnel 2 less preferred: AWS-style AS-path prepending on the VGW side

STATE_DIR = Path("/run/vtibgp-lab")
NS_GW = "vtibgp-lab-gw"
NS_AWS = "vtibgp-lab-aws"
# the management link: root namespace <-> gateway namespace, so the host reaches the metrics
HOST_DEV = "vtibgp-lab"
GW_MGMT_DEV = "mgmt0"
MGMT_NET = ipaddress.ip_network("169.254.179.0/30")
HOST_MGMT = "169.254.179.1"
GW_MGMT = "169.254.179.2"
METRICS_PORT = defaults.METRICS_PORT
SIGNALS = defaults.LAB_SIGNALS
REPO = Path(__file__).resolve().parents[2]

UP_TIMEOUT = 60.0
FAIL_TIMEOUT = 30.0
# a session that BIRD dropped (or whose hold timer ran out) has to be set up again
RESTORE_TIMEOUT = 90.0


class LabError(Exception):
    """A lab command cannot go on; the message says why and what to do."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _show_routes(topo: lab.Topology) -> None:
    for fam in ("-4", "-6"):
        out = topo.ip("gw", fam, "route", "show", "proto", "bgp")
        print(out.rstrip() or "(none)")


def _peers(vpn: str = "") -> list[dict[str, Any]]:
    """The lab gateway's vtibgp.yaml peers (gateway 2's are the same addresses)."""
    return [
        {"address": t.aws_v4, "interface": t.gw_dev, "families": ["ipv4", "ipv6"],
         "description": f"lab VGW tunnel {n}", "vpn": vpn}
        for n, t in lab.TUNNELS.items()
    ]


def _write_config(path: Path, sock: Path, listen: str = METRICS, vpn: str = "",
                  export: dict[str, Any] | None = None) -> None:
    data: dict[str, Any] = {
        "peers": _peers(vpn),
        "metrics": {"listen": listen},
        "control": {"socket": str(sock)},
        "startup": {"grace_time": 10},
    }
    if export:
        data["export"] = export
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _routes_via(topo: lab.Topology, dev: str, metric: int) -> bool:
    """Every lab prefix (IPv4 and IPv6) has a route via `dev` at `metric`."""
    got = {
        r["dst"] for fam in (4, 6) for r in topo.routes("gw", proto="bgp", family=fam)
        if r.get("dev") == dev and int(r.get("metric", 0)) == metric
    }
    return set(VPC) <= got


def _preflight() -> None:
    """Root and the programs the lab runs, or a LabError (status 2) naming what is missing."""
    if os.geteuid() != 0:
        raise LabError("needs root (network namespaces)", 2)
    missing = [p for p in ("ip", "bird", "birdc") if shutil.which(p) is None]
    if missing:
        raise LabError(f"{', '.join(missing)} not found (apt-get install iproute2 bird2)", 2)
    if not os.access(lab.default_exabgp(), os.X_OK):
        raise LabError(f"exabgp not found at {lab.default_exabgp()} "
                       f"(pip install 'vtibgp[exabgp]' into this environment)", 2)


def demo(pause: float) -> int:
    if os.geteuid() != 0:
        print("vtibgp lab: needs root (network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("bird") is None:
        print("vtibgp lab: BIRD 2 not found (apt-get install bird2)", file=sys.stderr)
        return 2
    lab.cleanup_stale()
    work = Path(tempfile.mkdtemp(prefix="vtibgp-demo-"))
    topo = lab.Topology()
    bird: lab.BirdPeer | None = None
    gw: lab.ExaBGPGateway | None = None
    try:
        _say(f"building namespaces {topo.gw} (gateway) and {topo.aws} (AWS VGW)")
        topo.up()
        bird = lab.BirdPeer(topo, work / "bird", prepend={2: 2}).start()
        bird.announce(VPC)
        sock = work / "vtibgp.sock"
        cfg = work / "vtibgp.yaml"
        _write_config(cfg, sock)
        cmd = [sys.executable, "-m", "vtibgp", "run", "--config", str(cfg)]
        gw = lab.ExaBGPGateway(topo, cmd, work / "exabgp").start()
        print(f"ExaBGP log: {gw.log_path}   vtibgp config: {cfg}")
        print(f"metrics while it runs: ip netns exec {topo.gw} curl -s http://{METRICS}/metrics")
        gw.wait_for(lambda: _routes_via(topo, "vti01", 100) and _routes_via(topo, "vti02", 101),
                    30, what="routes via vti01 (best) and vti02 (backup)")
        _say("BGP up on both tunnels: best via vti01 (metric 100), backup via vti02 (101)")
        _show_routes(topo)
        _say("vtibgp status")
        subprocess.run([sys.executable, "-m", "vtibgp", "status", "--socket", str(sock)],
                       check=False)
        time.sleep(pause)

        _say("tunnel 1 fails (the VGW endpoint drops the BGP session)")
        bird.disable_session(1)
        gw.wait_for(lambda: _routes_via(topo, "vti02", 100), 30, what="failover to vti02")
        _show_routes(topo)
        time.sleep(pause)

        _say("tunnel 1 restored")
        bird.enable_session(1)
        gw.wait_for(lambda: _routes_via(topo, "vti01", 100), 60, what="return to vti01")
        _show_routes(topo)
        _say("done; removing the lab")
        return 0
    except (lab.HarnessError, TimeoutError) as e:
        print(f"vtibgp lab: {e}", file=sys.stderr)
        return 1
    finally:
        if gw is not None:
            gw.stop()
        if bird is not None:
            bird.stop()
        topo.down()
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- the lasting lab


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold the lab's lock (``STATE_DIR/lock``) for one command. ``down`` removes the directory
    with the lock in it, so a waiter checks that the file it locked is still the one at that
    path, and starts again otherwise. When nothing is up the directory goes away again."""
    lock = STATE_DIR / "lock"
    while True:
        STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # removed between mkdir and open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if {p.name for p in STATE_DIR.iterdir()} <= {"lock"}:
                shutil.rmtree(STATE_DIR)
        os.close(fd)


def _read_state() -> dict[str, Any] | None:
    try:
        state = json.loads((STATE_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(state: Mapping[str, Any]) -> None:
    path = STATE_DIR / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _host_dev_exists() -> bool:
    res = subprocess.run(["ip", "link", "show", "dev", HOST_DEV], capture_output=True,
                         stdin=subprocess.DEVNULL, check=False)
    return res.returncode == 0


def _self_command() -> str:
    """How the user ran us, for the hints we print."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "vtibgp":
        # a relative path (lab.sh runs .venv/bin/vtibgp) would be wrong from elsewhere
        return shlex.quote(os.path.abspath(argv0)) if os.sep in argv0 else "vtibgp"
    return f"{shlex.quote(sys.executable)} -m vtibgp"


@dataclass
class _Lab:
    """The lab's pieces, built from the state file: the daemons are adopted, not started."""

    state: dict[str, Any]
    topo: lab.Topology
    bird: lab.BirdPeer
    gw: lab.ExaBGPGateway
    ipsec: ipsec.IpsecLab | None = None  # `up --ipsec strongswan`: the charons
    site2: SecondSite | None = None  # `up --gateways 2`: gateway 2 and the LAN router

    @property
    def vpc(self) -> list[str]:
        """The VGW's prefixes (IPv4 only over the IPsec lab's 0.0.0.0/0 tunnels)."""
        return [p for p in VPC if ":" not in p] if self.ipsec is not None else VPC

    @property
    def failed(self) -> dict[int, str]:
        return {int(n): how for n, how in self.state.get("failed", {}).items()}

    def save(self) -> None:
        if self.bird.pid is not None:
            self.state["bird"] = {**self.bird.record(), "snapshot": self.bird.snapshot()}
        if self.gw.pid is not None:
            self.state["exabgp"] = self.gw.record()
        if self.ipsec is not None:
            self.state["charons"] = self.ipsec.records()
        if self.site2 is not None:
            self.state["gateway2"] = self.site2.records()
        _write_state(self.state)

    def problems(self) -> list[str]:
        """Why this lab is not (wholly) up; empty when it is."""
        out: list[str] = []
        names = lab.list_namespaces()
        out += [f"namespace {ns} is missing" for ns in (NS_GW, NS_AWS) if ns not in names]
        if self.state.get("host_link") and not _host_dev_exists():
            out.append(f"the host link {HOST_DEV} is missing")
        if not self.bird.running():
            out.append("BIRD is not running")
        if not self.gw.running():
            out.append("ExaBGP is not running")
        if self.ipsec is not None:
            out += [f"{c!r} is not running" for c in self.ipsec.charons() if not c.running()]
        if self.site2 is not None:
            out += self.site2.problems()
        return out


def _make(state: dict[str, Any]) -> _Lab:
    """The lab's objects for ``state``, created the same way by every command (so that
    BIRD's config is always generated from the same arguments)."""
    topo: lab.Topology
    strongswan: ipsec.IpsecLab | None = None
    if state.get("ipsec") == "strongswan":
        topo = ipsec.IpsecTopology(tag="lab", names=(NS_GW, NS_AWS))
        strongswan = ipsec.IpsecLab(topo, STATE_DIR / "ipsec", STATE_DIR / "vtibgp.sock")
        strongswan.adopt(state.get("charons", {}))
        strongswan.dropped = {int(n): how for n, how in state.get("failed", {}).items()
                              if how in ("ipsec", "blackhole")}
    else:
        topo = lab.Topology(tag="lab", names=(NS_GW, NS_AWS))
    bird = lab.BirdPeer(topo, STATE_DIR / "bird", prepend=PREPEND,
                        socket=STATE_DIR / "bird.ctl")
    cfg = STATE_DIR / "vtibgp.yaml"
    site2 = None
    if state.get("gateways") == 2 or (
            "gateways" not in state and NS_GW2 in lab.list_namespaces()):
        site2 = SecondSite(topo, STATE_DIR, PREPEND)  # (also: to remove a half-built one)
        site2.adopt(state.get("gateway2", {}))
    gw = lab.ExaBGPGateway(topo, [sys.executable, "-m", "vtibgp", "run", "--config", str(cfg)],
                           STATE_DIR / "exabgp",
                           lan_peers=[site2.lan.lan_peer(1)] if site2 is not None else ())
    if "bird" in state:
        bird.adopt(state["bird"])
        bird.load_snapshot(state["bird"]["snapshot"])
    if "exabgp" in state:
        gw.adopt(state["exabgp"])
    return _Lab(state, topo, bird, gw, strongswan, site2)


def _existing() -> _Lab | None:
    """The lab as the state file describes it; None when nothing of it is there at all."""
    state = _read_state()
    if state is None:
        if not ({NS_GW, NS_AWS, NS_GW2} & set(lab.list_namespaces()) or _host_dev_exists()):
            return None
        state = {}  # left by a run that died before writing its state: still ours to remove
    return _make(state)


def _require_up() -> _Lab:
    found = _existing()
    if found is None:
        raise LabError(f"the lab is not up (`{_self_command()} lab up` builds it)")
    problems = found.problems()
    if problems:
        raise LabError(f"the lab is broken: {'; '.join(problems)}\n"
                       f"(`{_self_command()} lab up` builds it again, "
                       f"`{_self_command()} lab down` removes it)")
    return found


def _teardown(found: _Lab) -> list[str]:
    """Stop the daemons, delete the namespaces, the host link and the state directory.
    Returns what was removed, for the report. Safe to call on any partial lab."""
    removed: list[str] = found.site2.teardown() if found.site2 is not None else []
    for name, daemon in (("ExaBGP and vtibgp", found.gw), ("BIRD", found.bird)):
        if daemon.running():
            removed.append(f"{name} (pid {daemon.pid})")
        daemon.stop()  # also kills plugin processes ExaBGP left behind
    names = set(lab.list_namespaces())
    removed += [f"namespace {ns}" for ns in (NS_GW, NS_AWS) if ns in names]
    found.topo.down()  # kills whatever still runs in the namespaces, deletes them
    if _host_dev_exists():  # normally gone with the gateway namespace (its veth peer)
        subprocess.run(["ip", "link", "del", "dev", HOST_DEV], capture_output=True,
                       stdin=subprocess.DEVNULL, check=False)
        removed.append(f"host link {HOST_DEV}")
    if any(p.name != "lock" for p in STATE_DIR.iterdir()):
        removed.append(f"{STATE_DIR}/")
    for p in STATE_DIR.iterdir():
        if p.name == "lock":
            continue  # we hold it: _locked() removes the directory with it
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return removed


def _expected(failed: Mapping[int, str],
              tunnels: Mapping[int, lab.Tunnel] = lab.TUNNELS) -> dict[str, int]:
    """Device -> metric of the lab's routes when ``failed`` tunnels are down: the working
    tunnels in order of preference (1 before the prepended 2) at 100, 101."""
    up = [n for n in sorted(tunnels) if n not in failed]
    return {tunnels[n].gw_dev: 100 + i for i, n in enumerate(up)}


def _routes_are(topo: lab.Topology, want: Mapping[str, int],
                prefixes: list[str] = VPC) -> bool:
    """Every lab prefix is routed through exactly the devices and metrics of ``want``."""
    got: dict[str, set[tuple[str, int]]] = {p: set() for p in prefixes}
    for fam in (4, 6):
        for r in topo.routes("gw", proto="bgp", family=fam):
            if r.get("dst") in got:
                got[r["dst"]].add((str(r.get("dev")), int(r.get("metric", 0))))
    return all(paths == set(want.items()) for paths in got.values())


def _describe(want: Mapping[str, int]) -> str:
    if not want:
        return "no routes: both tunnels are down"
    parts = [f"{'best' if m == 100 else 'backup'} via {dev} (metric {m})"
             for dev, m in sorted(want.items(), key=lambda kv: kv[1])]
    return ", ".join(parts)


def _took(t0: float) -> str:
    dt = time.monotonic() - t0
    return f"{dt * 1000:.0f} ms" if dt < 1 else f"{dt:.1f} s"


def _wait_routes(found: _Lab, timeout: float, mover: str = "") -> dict[str, int]:
    """Wait until the gateway's routes are those of the failed tunnels; ``mover`` says what
    is expected to move them (for the messages)."""
    want = _expected(found.failed, found.topo.tunnels)
    found.gw.wait_for(lambda: _routes_are(found.topo, want, found.vpc), timeout,
                      what=f"the gateway's routes: {_describe(want)}{mover}")
    return want


def _print_vtibgp_status() -> None:
    res = subprocess.run([sys.executable, "-m", "vtibgp", "status", "--socket",
                          str(STATE_DIR / "vtibgp.sock")], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=30, check=False)
    print((res.stdout + res.stderr).rstrip())


def _print_tunnels(found: _Lab) -> None:
    try:
        blackholed = found.topo.blackholed()
    except lab.HarnessError as e:
        print(f"(cannot read the VGW's nftables blackhole: {e})")
        blackholed = set()
    for n, t in found.topo.tunnels.items():
        try:
            bgp = found.bird.session_state(n)
        except lab.HarnessError as e:
            bgp = f"unknown ({e})"
        how = found.failed.get(n)
        mark = f"FAILED by `lab fail {n} --signal {how}`" if how else "up"
        if n in blackholed:
            mark += f"; BLACKHOLED: nftables drops all IP traffic on the VGW's {t.aws_dev}"
        elif how == "blackhole":
            mark += f" (but no nftables rule drops {t.aws_dev}'s traffic: `lab restore {n}`)"
        if found.ipsec is not None:
            sa = found.ipsec.sa_state(n)
            dropped = {"ipsec": "; its UDP 500/4500 DROPPED on the outer link",
                       "blackhole": "; its ESP DROPPED on the outer link (IKE passes)"}
            mark = mark.split("; BLACKHOLED")[0].split(" (but no")[0]
            mark += dropped.get(found.ipsec.dropped.get(n, ""), "")
            mark += (f"; IPsec (swanctl --list-sas): IKE {sa[0]}, CHILD {sa[1] or 'none'}"
                     if sa else "; IPsec (swanctl --list-sas): no SA")
        print(f"tunnel {n}: {t.gw_dev} {t.gw_v4}/{t.plen_v4} <-> VGW {t.aws_v4}  "
              f"{mark}; BGP at the VGW: {bgp}")


def _print_overview(found: _Lab) -> None:
    _say(f"tunnels (gateway namespace {NS_GW}, AWS VGW namespace {NS_AWS})")
    _print_tunnels(found)
    _say(f"routes in {NS_GW}: {_describe(_expected(found.failed, found.topo.tunnels))}")
    _show_routes(found.topo)
    _say("vtibgp status")
    _print_vtibgp_status()
    if found.site2 is not None:
        _say("the LAN side (--gateways 2)")
        print(found.site2.overview(VPC[0]))


def _print_hints(found: _Lab) -> None:
    me = _self_command()
    listen = str(found.state.get("metrics", METRICS))
    prom = f"prometheus --config.file={STATE_DIR}/prometheus.yml " \
           f"--storage.tsdb.path=/var/tmp/vtibgp-lab-prometheus"
    if found.state.get("host_link"):
        metrics = f"curl -s http://{listen}/metrics"
        grafana_src = "that Prometheus (http://localhost:9090)"
    else:
        metrics = f"ip netns exec {NS_GW} curl -s http://{listen}/metrics"
        prom = f"ip netns exec {NS_GW} {prom}   (inside the namespace: built with " \
               f"--no-host-link, the host cannot reach the metrics)"
        grafana_src = "a Grafana that reaches that Prometheus"
    dashboard = REPO / "grafana" / "vtibgp-dashboard.json"
    dash = str(dashboard) if dashboard.exists() else "grafana/vtibgp-dashboard.json (repository)"
    rows = [
        ("status", f"{me} lab status"),
        ("failover", f"{me} lab fail 1{' --signal ipsec' if found.ipsec else ''}    "
                     f"(then: {me} lab restore 1; tunnel 1 or 2)"),
        ("silent failure", f"{me} lab fail 1 --signal blackhole    (only the probe sees it)"),
        *([("LAN failover", f"{me} lab fail 1; {me} lab fail 2    (both of gateway 1's "
            "tunnels: the LAN router moves to gateway 2; see lab status)")]
          if found.site2 is not None else []),
        ("remove it all", f"{me} lab down"),
        ("logs", f"{found.gw.log_path} (ExaBGP and vtibgp), {found.bird.log_path}"),
        ("gateway shell", f"ip netns exec {NS_GW} bash"),
        ("metrics", metrics),
        ("Prometheus", prom),
        ("Grafana", f"import {dash}, data source: {grafana_src}"),
    ]
    _say("the lab keeps running")
    for what, how in rows:
        print(f"  {what:<14} {how}")


def _prometheus_config(target: str) -> str:
    alerts = REPO / "config" / "prometheus" / "vtibgp-alerts.yml"
    conf: dict[str, Any] = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "scrape_configs": [{
            "job_name": "vtibgp",
            "static_configs": [{"targets": [target], "labels": {"instance": "vtibgp-lab"}}],
        }],
    }
    if alerts.exists():
        conf["rule_files"] = [str(alerts)]
    return "# written by `vtibgp lab up`, removed by `vtibgp lab down`\n" + yaml.safe_dump(
        conf, sort_keys=False)


def _check_host_net() -> None:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, check=False).stdout
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            net = ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
            if net.overlaps(MGMT_NET):
                raise LabError(f"this host already uses {net} (on {link.get('ifname')}), which "
                               f"overlaps the lab's host link {MGMT_NET}: run `lab up "
                               f"--no-host-link`")


def _build(host_link: bool, mode: str = "veth", gateways: int = 1) -> _Lab:
    listen = f"{GW_MGMT}:{METRICS_PORT}" if host_link else METRICS
    state: dict[str, Any] = {
        "version": 1, "namespaces": [NS_GW, NS_AWS], "host_link": host_link,
        "metrics": listen, "failed": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if mode == "strongswan":
        state["ipsec"] = mode
    if gateways == 2:
        if mode == "strongswan":
            raise LabError("--gateways 2 runs over veth tunnels only (not --ipsec "
                           "strongswan)", 2)
        state["gateways"] = 2
        state["namespaces"] += [*SecondSite.NAMESPACES]
    if host_link:
        _check_host_net()
    _write_state(state)  # first: whatever happens next, `down` knows this is the lab's
    found = _make(state)
    try:
        _say(f"building namespaces {NS_GW} (gateway) and {NS_AWS} (AWS VGW)")
        found.topo.up()
        if host_link:
            found.topo.add_host_link(HOST_DEV, GW_MGMT_DEV, f"{HOST_MGMT}/{MGMT_NET.prefixlen}",
                                     f"{GW_MGMT}/{MGMT_NET.prefixlen}")
        if found.ipsec is not None:
            print("strongSwan: one charon per tunnel and side (kernel-libipsec, TUN devices "
                  "ipsec0/ipsec1), the gateway's swanctl.conf as `aws-import --ike "
                  f"strongswan` writes it: {found.ipsec.gw[1].swanctl_path}")
            found.ipsec.start()
            found.save()
            found.ipsec.wait_established()
        found.bird.start()
        found.save()
        found.bird.announce(found.vpc)
        found.save()
        if found.ipsec is not None:
            (STATE_DIR / "vtibgp.yaml").write_text(ipsec.gateway_config(
                found.ipsec, STATE_DIR / "vtibgp.sock", metrics={"listen": listen},
                startup={"grace_time": 10}))
        else:
            _write_config(STATE_DIR / "vtibgp.yaml", STATE_DIR / "vtibgp.sock", listen,
                          vpn="vtibgp-lab", export=found.site2.lan_export(1)
                          if found.site2 is not None else None)
        if found.site2 is not None:
            print(f"gateway 2 ({NS_GW2}, its VGW in {NS_AWS2}) with its own VPN connection to "
                  f"the same VPC, and a LAN router ({NS_LAN}, BIRD AS {LAN_ASN}) peering with "
                  "both gateways")
            found.site2.build(found.vpc, _peers("vtibgp-lab"))
            found.save()
        (STATE_DIR / "prometheus.yml").write_text(_prometheus_config(listen))
        print(f"BIRD 2 as the VGW (AS {lab.AWS_ASN}, hold time {found.bird.hold_time} s), "
              f"announcing {', '.join(found.vpc)} on both tunnels, tunnel 2 prepended "
              f"{PREPEND[2]} times; ExaBGP (AS {lab.GW_ASN}) with vtibgp on the gateway")
        found.gw.start()
        found.save()
        _wait_routes(found, UP_TIMEOUT)
    except BaseException:
        _teardown(found)
        raise
    if found.site2 is not None:
        found.site2.lan.wait_gateways(found.vpc[0], {1, 2}, UP_TIMEOUT)
    lab.detach(found.topo, found.bird, found.gw)  # they outlive this command
    return found


def up(host_link: bool = True, mode: str = "veth", gateways: int = 1) -> int:
    _preflight()
    if mode == "strongswan" and (why := ipsec.available()) is not None:
        raise LabError(f"--ipsec strongswan: {why}", 2)
    with _locked():
        found = _existing()
        if found is not None:
            problems = found.problems()
            if not problems:
                had = bool(found.state.get("host_link"))
                print(f"the lab is already up (since {found.state.get('started', '?')}, "
                      f"tunnels: {found.state.get('ipsec', 'veth')})")
                if had != host_link:
                    print(f"(it was built {'with' if had else 'without'} the host link: "
                          f"`lab down` first to change that)")
                _print_overview(found)
                _print_hints(found)
                return 0
            print(f"the lab is partly up ({'; '.join(problems)}): removing it and building "
                  f"it again")
            _teardown(found)
        found = _build(host_link, mode, gateways)
        _print_overview(found)
        _print_hints(found)
    return 0


def status() -> int:
    _preflight()
    with _locked():
        found = _require_up()
        _print_overview(found)
        _print_hints(found)
    return 0


def tunnel_number(text: str) -> int:
    """"1", "2", "vti01" or "vti02" -> the tunnel number; LabError (status 2) otherwise."""
    for n, t in lab.TUNNELS.items():
        if text.strip() in (str(n), t.gw_dev, ipsec.tun_name(n)):
            return n
    names = " and ".join(f"{n} ({t.gw_dev})" for n, t in lab.TUNNELS.items())
    raise LabError(f"no tunnel {text!r}: the lab has tunnels {names}", 2)


def fail(tunnel: str, signal: str = "link") -> int:
    """Take tunnel ``tunnel`` down. ``link``: the VGW end of the veth goes down, so the
    gateway's device loses carrier (the tunnel is gone; BGP finds out only when its hold time
    runs out, vtibgp at once from the device); ``bgp``: the VGW closes the BGP session (a
    Cease, as when AWS resets a tunnel's session); ``both``; ``blackhole``: nftables at the
    VGW drops all the tunnel's IP traffic, the device keeps its carrier and BGP is not told
    (a silent tunnel failure: vtibgp's probe finds it, else BGP's hold timer)."""
    n = tunnel_number(tunnel)
    if signal not in SIGNALS:
        raise LabError(f"--signal must be one of {', '.join(SIGNALS)}", 2)
    if signal == "blackhole" and shutil.which("nft") is None:
        raise LabError("--signal blackhole needs nft (apt-get install nftables)", 2)
    _preflight()
    with _locked():
        found = _require_up()
        if found.ipsec is not None:
            return _fail_ipsec(found, n, signal)
        if signal in ("ipsec", "ike"):
            raise LabError(f"--signal {signal} needs real IPsec tunnels: this lab's are veth "
                           f"pairs (`lab down`, then `lab up --ipsec strongswan`)", 2)
        dev = lab.TUNNELS[n].gw_dev
        t0 = time.monotonic()
        timeout, mover = FAIL_TIMEOUT, ""
        if signal == "blackhole" and found.failed.get(n, signal) == signal:
            timeout = FAIL_TIMEOUT + found.bird.hold_time
            mover = (f" (moved by vtibgp's probe of {dev} when it sees no echo reply, or, "
                     f"without the probe, when BGP's {found.bird.hold_time} s hold time runs "
                     f"out)")
        if n in found.failed:
            print(f"tunnel {n} is already failed ({found.failed[n]}); "
                  f"`{_self_command()} lab restore {n}` brings it back")
        else:
            found.state.setdefault("failed", {})[str(n)] = signal
            found.save()  # before the change: a restore after a crash here still undoes it
            if signal in ("link", "both"):
                _say(f"tunnel {n} fails: the VGW end of {dev} goes down ({dev} loses carrier)")
                found.topo.carrier_off(n)
            if signal in ("bgp", "both"):
                _say(f"tunnel {n} fails: the VGW closes its BGP session (Cease)")
                found.bird.disable_session(n)
            if signal == "blackhole":
                aws_dev = lab.TUNNELS[n].aws_dev
                _say(f"tunnel {n} fails silently: nftables at the VGW drops all IP traffic on "
                     f"{aws_dev} ({dev} keeps its carrier, BGP is not told)")
                found.topo.blackhole(n, True)
                print(f"the routes move when vtibgp's probe sees no echo reply through {dev} "
                      f"(or, without the probe, when BGP's {found.bird.hold_time} s hold "
                      f"time runs out)", flush=True)
            found.save()
        want = _wait_routes(found, timeout, mover)
        print(f"{_describe(want)}: {_took(t0)} after the change")
        _print_overview(found)
    return 0


def restore(tunnel: str) -> int:
    """Undo ``fail`` on tunnel ``tunnel`` (carrier back, BGP session enabled, no blackhole:
    all of them, whatever the failure was, so a crash half-way is undone too) and wait for
    the routes to return to it."""
    n = tunnel_number(tunnel)
    _preflight()
    with _locked():
        found = _require_up()
        if found.ipsec is not None:
            return _restore_ipsec(found, n)
        t0 = time.monotonic()
        how = found.state.get("failed", {}).pop(str(n), None)
        if how is None:
            print(f"tunnel {n} is not failed (checking that it is up)")
        else:
            _say(f"tunnel {n} restored (it failed by {how})")
        found.topo.carrier_on(n)
        found.topo.blackhole(n, False)
        if n in found.bird.disabled:
            found.bird.enable_session(n)
        found.save()
        want = _wait_routes(found, RESTORE_TIMEOUT)
        print(f"{_describe(want)}: {_took(t0)} after the change (vtibgp's tunnel hold-down "
              f"is 2 s; a session that went down is set up again first)")
        _print_overview(found)
    return 0


def _fail_ipsec(found: _Lab, n: int, signal: str) -> int:
    """``fail`` in the strongSwan lab: ``ipsec`` drops the tunnel's UDP 500/4500 on the outer
    link (DPD gives up, charon runs down-client); ``ike`` is ``swanctl --terminate``;
    ``blackhole`` drops its ESP only (IKE and DPD pass: only the probe sees it); ``bgp``
    as in the veth lab."""
    assert found.ipsec is not None
    if signal not in ipsec.SIGNALS:
        raise LabError(f"--signal {signal}: the IPsec lab's tunnel devices are charon's TUNs "
                       f"(no carrier to take away); use one of {', '.join(ipsec.SIGNALS)}", 2)
    dev = found.topo.tunnels[n].gw_dev
    t0 = time.monotonic()
    if n in found.failed:
        print(f"tunnel {n} is already failed ({found.failed[n]}); "
              f"`{_self_command()} lab restore {n}` brings it back")
    else:
        found.state.setdefault("failed", {})[str(n)] = signal
        found.save()
        if signal == "ipsec":
            _say(f"tunnel {n} fails silently: its IKE and ESP (UDP 500/4500) are dropped on "
                 f"the outer link; charon's DPD gives up and runs down-client (or vtibgp's "
                 f"probe sees it first)")
            found.ipsec.drop(n, "ipsec")
        elif signal == "blackhole":
            _say(f"tunnel {n} goes black: its ESP is dropped on the outer link, IKE and DPD "
                 f"still pass (no updown: only vtibgp's probe of {dev} sees it)")
            found.ipsec.drop(n, "blackhole")
        elif signal == "ike":
            _say(f"tunnel {n} is closed: swanctl --terminate at the gateway (down-client)")
            found.ipsec.terminate(n)
        else:
            _say(f"tunnel {n} fails: the VGW closes its BGP session (Cease)")
            found.bird.disable_session(n)
        found.save()
    timeout = FAIL_TIMEOUT + (found.bird.hold_time if signal == "blackhole" else 0)
    want = _wait_routes(found, timeout)
    print(f"{_describe(want)}: {_took(t0)} after the change")
    _print_overview(found)
    return 0


def _restore_ipsec(found: _Lab, n: int) -> int:
    """``restore`` in the strongSwan lab: no drop, the SA initiated, the session enabled."""
    assert found.ipsec is not None
    t0 = time.monotonic()
    how = found.state.get("failed", {}).pop(str(n), None)
    _say(f"tunnel {n} restored (it failed by {how})" if how else
         f"tunnel {n} is not failed (checking that it is up)")
    found.ipsec.drop(n, None)
    if n in found.bird.disabled:
        found.bird.enable_session(n)
    if found.ipsec.sa_state(n) is None:  # closed (ike); after a drop charon retries itself
        found.ipsec.initiate(n)
    found.save()
    want = _wait_routes(found, RESTORE_TIMEOUT)
    print(f"{_describe(want)}: {_took(t0)} after the change (the SA is set up again, then "
          f"vtibgp's tunnel hold-down of 2 s)")
    _print_overview(found)
    return 0


def down() -> int:
    _preflight()
    with _locked():
        found = _existing()
        if found is None:
            print("the lab is not up: nothing to remove")
            return 0
        removed = _teardown(found)
    print("removed: " + (", ".join(removed) if removed else "nothing was left"))
    return 0


def dispatch(args: argparse.Namespace) -> int:
    """``vtibgp lab …`` as parsed by cli.py."""
    try:
        match args.lab_command:
            case "up":
                return up(host_link=not args.no_host_link,
                          mode=getattr(args, "ipsec", "veth"),
                          gateways=getattr(args, "gateways", 1))
            case "status":
                return status()
            case "fail":
                return fail(args.tunnel, args.signal)
            case "restore":
                return restore(args.tunnel)
            case "down":
                return down()
            case "demo":
                return demo(args.pause)
        raise LabError(f"unknown lab command {args.lab_command!r}", 2)
    except LabError as e:
        print(f"vtibgp lab {args.lab_command}: {e}", file=sys.stderr)
        return e.status
    except (lab.HarnessError, TimeoutError, OSError) as e:
        print(f"vtibgp lab {args.lab_command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vtibgp lab {args.lab_command}: interrupted", file=sys.stderr)
        return 130
