"""What the daemon makes known: logs and Prometheus metrics of decisions and events, and the
`status` answer. Decides nothing: it reads the core through its queries and views, and
remembers only what is for people (since when a session or device is in its state, flaps,
which refusals were logged).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from vtibgp import __version__
from vtibgp.config.schema import Config
from vtibgp.core import view
from vtibgp.core.decision import Decision, TunnelChange
from vtibgp.core.engine import REPAIR_KINDS, Core
from vtibgp.core.model import DeviceState, OpKind, PeerState
from vtibgp.core.policy import REASONS as POLICY_REASONS
from vtibgp.exabgp.parse import REASONS as INPUT_REASONS
from vtibgp.exabgp.parse import LineKind
from vtibgp.shell import metrics as m

log = logging.getLogger("vtibgp")

LOGGED_REJECTIONS = 10_000  # (peer, prefix, reason) remembered so each is logged once


def tunnel_devices(cfg: Config) -> dict[str, str]:
    """The tunnel devices we route into, with the VPN connection each belongs to."""
    vpn_of: dict[str, str] = {}
    for p in cfg.peers:
        if p.interface and (p.vpn or p.interface not in vpn_of):
            vpn_of[p.interface] = p.vpn
    return vpn_of


class Reporter:
    def __init__(self, cfg: Config, core: Core) -> None:
        self.core = core
        self.configure(cfg)
        self.peer_since: dict[str, float] = {}  # wall-clock time of each session's state
        self.device_since: dict[str, tuple[float, str]] = {}  # ... of each device's, and why
        self.flaps: dict[str, int] = {}
        self._logged_rejections: set[tuple[str, str, str]] = set()
        self._sync_reported = False

    def configure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.known_peers = {p.address for p in cfg.peers}
        self.vpn_of = tunnel_devices(cfg)

    # ---------------------------------------------------------------- series

    def zero_series(self) -> None:
        """Create every series with a known label set at start, so a peer that never comes
        up still alerts and rate() sees the first increment of each counter."""
        now = time.time()
        for dev in self.vpn_of:
            self.tunnel_gauges(dev)
            m.TUNNEL_SINCE.labels(dev).set(now)
            usable = self.core.scope_usable(("device", dev))
            self.device_since.setdefault(dev, (now, "at start" if usable else "down at start"))
            for role in m.ROLES:
                m.TUNNEL_ROUTES.labels(dev, role).set(0)
        for p in self.cfg.peers:
            m.PEER_UP.labels(p.address).set(0)
            m.PEER_STATE_SINCE.labels(p.address).set(now)
            m.PREFIXES_RECEIVED.labels(p.address).inc(0)
            m.WITHDRAWS_RECEIVED.labels(p.address).inc(0)
            m.PEER_PATHS.labels(p.address).set(0)
            for reason in (*POLICY_REASONS, "max_prefix"):
                m.PREFIXES_REJECTED.labels(p.address, reason).inc(0)
        for reason in INPUT_REASONS:
            m.INPUT_REJECTED.labels(reason).inc(0)
        for line_kind in LineKind:
            m.INPUT_LINES.labels(line_kind.value).inc(0)
        for op in OpKind:
            for result in m.OP_RESULTS:
                m.ROUTE_OPS.labels(op.value, result).inc(0)
        m.PREFIXES_IGNORED.labels("unknown_peer").inc(0)
        self.exports()
        if self.cfg.probe_enabled:
            for dev in {p.interface for p in self.cfg.peers if p.probe and p.interface}:
                for counter in (m.PROBE_SENT, m.PROBE_REPLIES, m.PROBE_LOST):
                    counter.labels(dev).inc(0)
        for repair in REPAIR_KINDS:
            m.REPAIRS.labels(repair).inc(0)

    def limit_gauges(self) -> None:
        for p in self.cfg.peers:
            m.PEER_MAX_PREFIXES.labels(p.address).set(self.core.prefix_limit(p.address))

    def route_gauges(self) -> None:
        """Route counts by role, per device and per peer (it walks every shape)."""
        counts = view.route_counts(self.core, self.vpn_of)
        for dev, (best, backup) in counts.per_device.items():
            m.TUNNEL_ROUTES.labels(dev, "best").set(best)
            m.TUNNEL_ROUTES.labels(dev, "backup").set(backup)
        m.ROUTES_INSTALLED.labels("best").set(counts.best)
        m.ROUTES_INSTALLED.labels("backup").set(counts.backup)
        for p in self.cfg.peers:
            best, backup = counts.per_peer.get(p.address, (0, 0))
            m.PEER_ROUTES.labels(p.address, "best").set(best)
            m.PEER_ROUTES.labels(p.address, "backup").set(backup)

    def exports(self) -> None:
        """What each configured peer is told of our networks."""
        m.EXPORT_NETWORKS.set(len(self.cfg.export_networks))
        for p in self.cfg.peers:
            told = view.export_view(self.core, p.address)
            m.EXPORTED.labels(p.address, "true").set(told["preferred"])
            m.EXPORTED.labels(p.address, "false").set(told["less_preferred"])
        for peer, count in view.lan_view(self.core).items():
            m.LAN_ANNOUNCED.labels(peer).set(count["announced"])
            m.LAN_SESSION_UP.labels(peer).set(1 if count["state"] == "up" else 0)

    def tunnel_gauges(self, device: str) -> None:
        down = self.core.signals_down(("device", device))
        m.TUNNEL_UP.labels(device, self.vpn_of.get(device, "")).set(
            1 if self.core.scope_usable(("device", device)) else 0)
        for sig in m.TUNNEL_SIGNALS:
            m.TUNNEL_SIGNAL_UP.labels(device, sig).set(0 if sig in down else 1)

    # ---------------------------------------------------------------- decisions

    def decision(self, d: Decision) -> None:
        """The effects of a decision that are for people: logs and metrics."""
        if d.synced is not None and not self._sync_reported:
            self._sync_reported = True
            m.STALE_SWEPT.inc(d.synced)
            m.SYNCED.set(1)
            log.info("start: sync complete; %d unconfirmed routes removed", d.synced)
        for ch in d.tunnels:
            self.tunnel_change(ch)
        if d.refused:
            self._refusals(d)
        if d.limits or d.held_back:
            self._limits(d)
        if d.repairs:
            for kind, n in d.repairs.items():
                m.REPAIRS.labels(kind).inc(n)
            log.warning("reconcile: repaired %s", ", ".join(f"{n} {k}" for k, n in
                                                            sorted(d.repairs.items())))
        for why in d.warnings:
            log.warning("%s", why)

    def tunnel_change(self, ch: TunnelChange) -> None:
        kind, name = ch.scope
        what = f"tunnel {name}" if kind == "device" else f"tunnel of peer {name}"
        if ch.flap:
            log.warning("%s flapped (%s) during its %gs hold-down", what, ch.reason,
                        self.cfg.hold_down)
        else:
            log.log(logging.INFO if ch.up else logging.WARNING, "%s %s (%s)", what,
                    "up: routes return" if ch.up else "down: routes moved off it", ch.reason)
        if kind != "device":
            return
        if ch.flap:
            m.TUNNEL_FLAPS.labels(name).inc()
            self.flaps[name] = self.flaps.get(name, 0) + 1
        else:
            m.TUNNEL_TRANSITIONS.labels(name, "up" if ch.up else "down").inc()
            m.TUNNEL_SINCE.labels(name).set(time.time())
            self.device_since[name] = (time.time(), ch.reason)
        self.tunnel_gauges(name)

    def _refusals(self, d: Decision) -> None:
        """Count refusals by peer and reason, and log each (peer, prefix, reason) once."""
        for (peer, reason), n in d.refused.items():
            m.PREFIXES_REJECTED.labels(peer, reason).inc(n)
        total = sum(d.refused.values())
        logged = 0
        for peer, prefix, reason in d.refused_samples:
            key = (peer, prefix, reason)
            if key in self._logged_rejections:
                continue
            if len(self._logged_rejections) >= LOGGED_REJECTIONS:
                self._logged_rejections.clear()
            self._logged_rejections.add(key)
            log.warning("peer %s: refused %s (%s)", peer, prefix, reason)
            logged += 1
        if total > logged and logged:
            log.warning("… and %d more refusals in this batch (see "
                        "vtibgp_prefixes_rejected_total)", total - logged)

    def _limits(self, d: Decision) -> None:
        for lc in d.limits:
            m.MAX_PREFIX_EVENTS.labels(lc.peer, lc.event).inc()
            if lc.event == "warn":
                log.warning("peer %s: %d prefixes, near its limit of %d", lc.peer, lc.held,
                            lc.limit)
            elif lc.event == "limit":
                log.error("peer %s: prefix limit %d reached; %s", lc.peer, lc.limit,
                          "refusing new prefixes" if lc.action == "stop" else "warning only")
            else:
                log.error("peer %s: prefix limit %d exceeded: resetting the session (Cease 1, "
                          "maximum number of prefixes reached)", lc.peer, lc.limit)
        for hb in d.held_back:
            log.warning("peer %s: session up inside the max-prefix restart delay; its prefixes "
                        "are refused for %.0f s more, then taken from ExaBGP's adj-rib-in",
                        hb.peer, max(0.0, hb.until - time.monotonic()))

    # ---------------------------------------------------------------- events

    def session(self, ev: PeerState) -> None:
        """A session's state message (before the core has it)."""
        level = logging.INFO if ev.state != "connected" else logging.DEBUG
        log.log(level, "peer %s session %s%s", ev.peer, ev.state,
                f" ({ev.reason})" if ev.reason else "")
        if self.core.session(ev.peer) != ev.state or ev.peer not in self.peer_since:
            self.peer_since[ev.peer] = time.time()
        if ev.peer in self.known_peers:
            m.PEER_UP.labels(ev.peer).set(1 if ev.state == "up" else 0)
            m.PEER_STATE_SINCE.labels(ev.peer).set(self.peer_since[ev.peer])

    def learned(self, rows: list[tuple[str, str, int | None]]) -> None:
        """The summary's session states, for the peers nothing live has told us about."""
        now = time.time()
        for peer, named, up in rows:
            if named == "up" and up is not None:
                self.peer_since[peer] = now - up
            if peer in self.known_peers:
                m.PEER_UP.labels(peer).set(1 if named == "up" else 0)
                if peer in self.peer_since:
                    m.PEER_STATE_SINCE.labels(peer).set(self.peer_since[peer])

    def device(self, ev: DeviceState) -> None:
        self.device_since[ev.device] = (time.time(), ev.reason)
        log.info("device %s %s (%s)", ev.device, "usable" if ev.usable else "unusable",
                 ev.reason)

    # ---------------------------------------------------------------- status

    def status(self, api_version: str | None, summary: dict[str, str]) -> dict[str, Any]:
        """`vtibgp status`: every peer and device with the core's view of it, and the
        routes by role. `summary`: the sessions ExaBGP's summary told (no state message)."""
        counts = view.route_counts(self.core, self.vpn_of)
        peers = []
        addresses = [p.address for p in self.cfg.peers]
        lan = view.lan_view(self.core)
        addresses += sorted((view.peers_seen(self.core) | set(summary)) - set(addresses)
                            - set(lan))
        for addr in addresses:
            pc = self.cfg.peer(addr)
            core_view = view.peer_view(self.core, addr)
            best, backup = counts.per_peer.get(addr, (0, 0))
            peers.append({
                "peer": addr,
                "description": pc.description if pc else "",
                "configured": pc is not None,
                **core_view,
                # a state message is newer than what the resync's summary said
                "state": core_view["state"] or summary.get(addr, "idle"),
                "exported": view.export_view(self.core, addr),
                "since": self.peer_since.get(addr),
                "best": best,
                "backup": backup,
            })
        devices = []
        names = {p["device"] for p in peers if p["device"]} | set(counts.per_device)
        for name in sorted(names):
            since, reason = self.device_since.get(name, (None, ""))
            best, backup = counts.per_device.get(name, (0, 0))
            devices.append({"device": name, **view.device_view(self.core, name),
                            "flaps": self.flaps.get(name, 0), "reason": reason,
                            "since": since, "best": best, "backup": backup})
        return {
            "version": __version__,
            "exabgp_api": api_version,
            "synced": self.core.synced,
            "table": self.cfg.table,
            "protocol": self.cfg.protocol,
            "peers": peers,
            "lan_peers": [{"peer": addr, "description": lp.description, **lan[addr],
                           "state": lan[addr]["state"] or summary.get(addr, "idle")}
                          for lp in self.cfg.export_lan_peers
                          if (addr := lp.address) in lan],
            "devices": devices,
            "routes": {"prefixes": len(self.core.installed), "best": counts.best,
                       "total": self.core.route_count()},
        }
