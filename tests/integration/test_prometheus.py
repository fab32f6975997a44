"""The dashboard and the alerts against a real Prometheus scraping a running vtibgp.

BIRD (the AWS side) announces a few prefixes on both tunnels, tunnel 2 prepended; the real
ExaBGP runs `vtibgp run` in the gateway namespace with the default metrics address
(127.0.0.1:10179); a real Prometheus (Debian's package) runs in the same namespace, scraping
every second and evaluating the shipped alert rules every second. The test talks to
Prometheus' HTTP API from inside the namespace and proves:

* the scrape target is up and what vtibgp serves passes `promtool check metrics`;
* the dashboard's instance variable finds the gateway;
* EVERY PromQL expression of EVERY dashboard panel returns data (a finite sample), after
  real activity (announces, withdraws, a failover of tunnel 1 and back with a flap in its
  hold-down, a kernel conflict with a foreign route), with the template variables filled in
  as Grafana would; every metric the dashboard uses has series, except a few counters that
  only their event creates;
* every rule of the shipped alert file evaluates without error;
* taking tunnel 1 down (its device and its BGP session) makes VtibgpTunnelDown and
  VtibgpBgpPeerDown pending; taking tunnel 2 down as well makes VtibgpVpnConnectionDown and
  VtibgpInstalledRoutesGone pending. A copy of the rules with every `for` cut to 1 s is loaded
  too and shows the same alerts firing, with their annotations rendered.

Both daemons live in a namespace of their own, so the fixed ports cannot collide with
anything on the host.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vtibgp.lab import parts as harness

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "prometheus" / "vtibgp-alerts.yml"
DASHBOARD = ROOT / "grafana" / "vtibgp-dashboard.json"

METRICS_ADDR = "127.0.0.1:10179"  # vtibgp's default
PROM_ADDR = "127.0.0.1:9090"
VPN = "vpn-lab"
P1, P2 = harness.TUNNELS[1].aws_v4, harness.TUNNELS[2].aws_v4
V4 = ["10.100.0.0/16", "10.101.0.0/24", "10.102.0.0/24"]
CONFLICT = "10.102.0.0/24"  # a foreign route holds it at our metric: the kernel says EEXIST
TEMPLATE_VALUES = {"instance": ".+", "__rate_interval": "15s"}

# Metrics a healthy run never creates a series for: labelled counters that appear with their
# first event. Their dashboard expressions fall back to 0 per gateway, so they still return
# data; here they may be absent.
EVENT_ONLY = {
    "vtibgp_input_rejected_total": "no malformed line from ExaBGP",
    "vtibgp_prefixes_rejected_total": "no import policy refusal",
    "vtibgp_prefixes_ignored_total": "no prefix from an unconfigured peer",
    "vtibgp_tunnel_flaps_total": "no flap",
    "vtibgp_kernel_repairs_total": "nothing to repair",
}

_API_CLIENT = r"""
import json, sys, urllib.error, urllib.parse, urllib.request
base = sys.argv[1]
out = []
for path, params in json.load(sys.stdin):
    url = base + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            out.append([resp.status, resp.read().decode("utf-8", "replace")])
    except urllib.error.HTTPError as exc:
        out.append([exc.code, exc.read().decode("utf-8", "replace")])
    except OSError as exc:
        out.append([0, str(exc)])
json.dump(out, sys.stdout)
"""

Request = tuple[str, dict[str, Any]]
GatewayFactory = Callable[..., harness.ExaBGPGateway]


def http_get(topo: harness.Topology, base: str, requests: list[Request]) -> list[tuple[int, str]]:
    """GET each (path, params) from inside the gateway namespace, in one process."""
    res = subprocess.run(
        ["ip", "netns", "exec", topo.gw, sys.executable, "-c", _API_CLIENT, f"http://{base}"],
        input=json.dumps(requests), capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise AssertionError(f"API client failed: {res.stderr}")
    return [(int(status), str(body)) for status, body in json.loads(res.stdout)]


class Prometheus:
    """A real Prometheus in the gateway namespace, its data in ``workdir``."""

    def __init__(self, topo: harness.Topology, workdir: Path, rule_files: list[Path]) -> None:
        self.topo = topo
        self.workdir = workdir
        self.log_path = workdir / "prometheus.log"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "vtibgp",
                                "static_configs": [{"targets": [METRICS_ADDR]}]}],
        }))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        binary = shutil.which("prometheus")
        assert binary is not None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.topo.gw, binary,
                 f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address={PROM_ADDR}", "--web.enable-lifecycle"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        harness.wait_until(self.ready, 20, interval=0.2, what="Prometheus ready")
        return self

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"Prometheus exited:\n{self.log_tail()}")
        return http_get(self.topo, PROM_ADDR, [("/-/ready", {})])[0][0] == 200

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self) -> str:
        try:
            return harness.tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def api(self, requests: list[Request]) -> list[Any]:
        """The ``data`` of each API answer (an error answer fails the test)."""
        out = []
        for (path, params), (status, body) in zip(
                requests, http_get(self.topo, PROM_ADDR, requests), strict=True):
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {"status": "error", "error": body}
            if status != 200 or doc.get("status") != "success":
                raise AssertionError(f"{path} {params}: HTTP {status}: {doc.get('error')}")
            out.append(doc["data"])
        return out

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api([("/api/v1/query", {"query": expr})])[0][
            "result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api([("/api/v1/alerts", {})])[0]["alerts"]
        return found


@pytest.fixture
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None or shutil.which("promtool") is None:
        msg = "prometheus/promtool not found (apt-get install prometheus)"
        if os.environ.get("VTIBGP_REQUIRE_INTEGRATION", "") not in ("", "0"):
            pytest.fail(msg)  # CI: a missing tool must not turn into a green skip
        pytest.skip(msg)
    return path


@pytest.fixture
def prometheus(
    topology: harness.Topology, tmp_path: Path, prometheus_bin: str,
    request: pytest.FixtureRequest,
) -> Iterator[Prometheus]:
    """Prometheus with the shipped alert rules and a fast copy (every `for` 1 s, alert
    label copy="fast")."""
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    fast = yaml.safe_load(ALERTS.read_text())
    for group in fast["groups"]:
        group["name"] += "-fast"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
            rule.setdefault("labels", {})["copy"] = "fast"
    fast_path = workdir / "vtibgp-alerts-fast.yml"
    fast_path.write_text(yaml.safe_dump(fast))
    prom = Prometheus(topology, workdir, [ALERTS, fast_path])
    try:
        yield prom.start()
    finally:
        prom.stop()
        failed = any(getattr(getattr(request.node, f"_vtb_rep_{w}", None), "failed", False)
                     for w in ("setup", "call"))
        if failed:
            print(f"--- Prometheus log ({prom.log_path}) ---\n{prom.log_tail()}")


# --------------------------------------------------------------------------- helpers


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel / refId, expression with the template variables filled in), every target."""
    dash = json.loads(DASHBOARD.read_text())
    flat: list[dict[str, Any]] = []
    for p in dash["panels"]:
        flat += p.get("panels", []) if p.get("type") == "row" else [p]
    out = []
    for p in flat:
        for t in p.get("targets", []):
            expr = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                          lambda m: TEMPLATE_VALUES[m.group(1) or m.group(2)], t["expr"])
            out.append((f"{p['title']} / {t['refId']}", expr))
    return out


def finite_points(matrix: list[dict[str, Any]]) -> int:
    return sum(1 for series in matrix for _, v in series["values"] if math.isfinite(float(v)))


def write_config(path: Path) -> Path:
    peers = [{"address": t.aws_v4, "interface": t.gw_dev, "families": ["ipv4"], "vpn": VPN,
              "description": f"lab tunnel {n}"} for n, t in harness.TUNNELS.items()]
    path.write_text(yaml.safe_dump({
        "log_level": "info", "peers": peers, "startup": {"grace_time": 10},
        "tunnel": {"hold_down": 1},
        "control": {"socket": str(path.parent / "ctl.sock")},
        # a LAN-side peer with no ExaBGP neighbor behind it: its session stays down (the
        # LAN panel's data, and VtibgpLanSessionDown)
        "export": {"lan_peers": [{"address": "192.168.1.1", "peer_as": 65010,
                                  "local_address": "192.168.1.2"}]},
        # metrics.listen left out: the default, 127.0.0.1:10179, is what is scraped
    }))
    return path


def exported(topo: harness.Topology, *prefixes: str) -> list[float | None]:
    """The value of the first sample of vtibgp's /metrics starting with each prefix."""
    status, text = http_get(topo, METRICS_ADDR, [("/metrics", {})])[0]
    assert status == 200, text
    out: list[float | None] = []
    for prefix in prefixes:
        line = next((ln for ln in text.splitlines() if ln.startswith(prefix)), None)
        out.append(None if line is None else float(line.rsplit(" ", 1)[1]))
    return out


def our_routes(topo: harness.Topology) -> set[tuple[str, int, str]]:
    return {(r["dst"], int(r.get("metric", 0)), r.get("dev", ""))
            for r in topo.routes("gw", proto=186)}


def wait_alerts(prom: Prometheus, gw: harness.ExaBGPGateway,
                want: dict[tuple[str, str], dict[str, str]], timeout: float = 15.0
                ) -> dict[tuple[str, str], dict[str, Any]]:
    """Wait until every (alertname, copy) in ``want`` is active with those labels: the
    shipped rule ("shipped") pending or firing, the fast copy ("fast") firing."""
    found: dict[tuple[str, str], dict[str, Any]] = {}

    def check() -> bool:
        for a in prom.alerts():
            copy = a["labels"].get("copy", "shipped")
            key = (a["labels"]["alertname"], copy)
            labels = want.get(key)
            if labels is None or any(a["labels"].get(k) != v for k, v in labels.items()):
                continue
            if copy == "fast" and a["state"] != "firing":
                continue
            found[key] = a
        return set(found) >= set(want)

    try:
        gw.wait_for(check, timeout, what="alerts")
    except TimeoutError as exc:
        raise AssertionError(f"alerts {sorted(set(want) - set(found))} not active; "
                             f"active: {json.dumps(prom.alerts(), indent=1)}") from exc
    return found


# --------------------------------------------------------------------------- the test


def test_dashboard_queries_return_data_and_alerts_fire(
    topology: harness.Topology, bird_peer: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    prometheus: Prometheus, tmp_path: Path,
) -> None:
    t_start = time.time()
    bird_peer.set_prepend(2, 2)
    bird_peer.announce(V4)
    topology.ip("gw", "route", "add", CONFLICT, "dev", "vti02", "metric", "100",
                "proto", "static")
    gw = exabgp_gateway([sys.executable, "-m", "vtibgp", "run", "--config",
                         str(write_config(tmp_path / "vtibgp.yaml"))])
    gw.wait_for(lambda: len(our_routes(topology)) >= 5, 20, what="routes installed")
    # Prometheus applies new targets on a 5 s tick: let it scrape vtibgp before anything
    # happens, so every counter has a sample from before the activity (rate() needs two)
    gw.wait_for(lambda: prometheus.query('up{job="vtibgp"} == 1'), 15, what="first scrape")

    # tunnel 1 fails over and back, with a flap inside its 1 s hold-down on the way
    topology.set_link("gw", "vti01", False)
    gw.wait_for(lambda: exported(topology, 'vtibgp_tunnel_up{device="vti01"')[0] == 0, 10,
                what="vti01 down")
    topology.set_link("gw", "vti01", True)
    time.sleep(0.2)
    topology.set_link("gw", "vti01", False)
    time.sleep(0.2)
    topology.set_link("gw", "vti01", True)
    gw.wait_for(lambda: exported(topology, 'vtibgp_tunnel_flaps_total{device="vti01"',
                                 'vtibgp_tunnel_up{device="vti01"') == [1, 1], 10,
                what="vti01 flapped and back up")

    # activity: announces and withdraws, spread over a few scrapes
    bird_peer.announce(["10.110.0.0/24", "10.111.0.0/24"])
    time.sleep(1.5)
    # the first withdraw creates the peers' withdraw counters; rate() needs a second one
    bird_peer.withdraw(["10.110.0.0/24"])
    gw.wait_for(lambda: prometheus.query("vtibgp_withdraws_received_total"), 10,
                what="withdraw counters scraped")
    bird_peer.withdraw(["10.111.0.0/24"])
    gw.wait_for(lambda: prometheus.query(
        "increase(vtibgp_withdraws_received_total[15s]) > 0"), 20, what="withdraws scraped")
    gw.wait_for(lambda: prometheus.query(
        'increase(vtibgp_kernel_batch_seconds_count[15s]) > 0'), 10, what="batches scraped")

    time.sleep(1.5)  # the last steps of the range query below see the activity too

    # the target, the exposition, the instance variable
    (targets,) = prometheus.api([("/api/v1/targets", {"state": "active"})])
    ours = [t for t in targets["activeTargets"] if t["labels"]["job"] == "vtibgp"]
    assert [(t["labels"]["instance"], t["health"]) for t in ours] == [(METRICS_ADDR, "up")]
    status, exposition = http_get(topology, METRICS_ADDR, [("/metrics", {})])[0]
    assert status == 200
    lint = subprocess.run(["promtool", "check", "metrics"], input=exposition,
                          capture_output=True, text=True, timeout=30, check=False)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    (instances,) = prometheus.api([("/api/v1/label/instance/values",
                                    {"match[]": "vtibgp_build_info"})])
    assert instances == [METRICS_ADDR]

    # every expression of every panel, as Grafana asks for it: a range query
    exprs = dashboard_exprs()
    now = time.time()
    answers = prometheus.api([("/api/v1/query_range", {
        "query": expr, "start": f"{t_start:.3f}", "end": f"{now:.3f}", "step": "1"})
        for _, expr in exprs])
    empty = [f"{where}: {expr}" for (where, expr), data in zip(exprs, answers, strict=True)
             if not finite_points(data["result"])]
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    # every metric the dashboard uses has series, except the ones only events create
    used = {n for _, e in exprs for n in re.findall(r"\bvtibgp_\w+", e)}
    present = {s["metric"]["__name__"] for s in prometheus.query(
        'count by (__name__) ({__name__=~"vtibgp_.+"})')}
    missing = sorted(used - present - set(EVENT_ONLY))
    assert not missing, f"metrics without any series: {missing}"
    errors = prometheus.query('vtibgp_kernel_errors_total{errno="EEXIST"}')
    assert errors and float(errors[0]["value"][1]) >= 1, "the foreign route caused no EEXIST"
    tunnels = {(s["metric"]["device"], s["metric"]["vpn"], s["value"][1])
               for s in prometheus.query("vtibgp_tunnel_up")}
    assert tunnels == {("vti01", VPN, "1"), ("vti02", VPN, "1")}

    # the shipped rules evaluate cleanly
    (rules,) = prometheus.api([("/api/v1/rules", {})])
    bad = [(r["name"], r.get("lastError")) for g in rules["groups"] for r in g["rules"]
           if r["health"] == "err"]
    assert not bad, bad

    # tunnel 1 goes down: its BGP session (the Cease still gets through), then its device
    bird_peer.disable_session(1)
    gw.wait_for(lambda: exported(topology, f'vtibgp_peer_up{{peer="{P1}"')[0] == 0, 10,
                what="session 1 down")
    topology.set_link("gw", "vti01", False)
    found = wait_alerts(prometheus, gw, {
        (name, copy): labels
        for name, labels in (("VtibgpTunnelDown", {"device": "vti01", "vpn": VPN}),
                             ("VtibgpBgpPeerDown", {"peer": P1}))
        for copy in ("shipped", "fast")})
    fast_tunnel = found[("VtibgpTunnelDown", "fast")]["annotations"]
    assert "vti01" in fast_tunnel["summary"] and VPN in fast_tunnel["description"]
    assert P1 in found[("VtibgpBgpPeerDown", "fast")]["annotations"]["summary"]

    # and tunnel 2: the whole VPN connection is down, no route is left
    topology.set_link("gw", "vti02", False)
    found = wait_alerts(prometheus, gw, {
        (name, copy): labels
        for name, labels in (("VtibgpVpnConnectionDown", {"vpn": VPN}),
                             ("VtibgpInstalledRoutesGone", {}))
        for copy in ("shipped", "fast")})
    assert VPN in found[("VtibgpVpnConnectionDown", "fast")]["annotations"]["summary"]
    assert found[("VtibgpVpnConnectionDown", "fast")]["labels"]["severity"] == "critical"
    assert not any(a["labels"]["alertname"] == "VtibgpExporterDown"
                   for a in prometheus.alerts())
