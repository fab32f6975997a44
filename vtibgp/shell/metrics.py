"""Every Prometheus metric vtibgp exports, defined here and nowhere else.

Labels come from fixed sets (kind, reason, op, result) or from configured names (peer,
device): never a prefix or a free-text message, so cardinality stays bounded.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from vtibgp import __version__
from vtibgp.core.tunnels import SIGNALS

log = logging.getLogger("vtibgp.shell.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)

# The label values the shell sets (the core's and the parser's own sets, such as repair kinds
# and refusal reasons, live beside the code that produces them). Every series with a known
# label set is created at start from these, so that rate() sees the first increment.
OP_RESULTS = ("ok", "conflict", "error")  # vtibgp_kernel_route_operations_total{result}
ROLES = ("best", "backup")  # vtibgp_tunnel_routes, vtibgp_peer_routes, vtibgp_kernel_routes
TUNNEL_SIGNALS = SIGNALS  # vtibgp_tunnel_signal_up{signal}: the core's tunnel signals

BUILD = Info(
    "vtibgp_build", "vtibgp version and the ExaBGP JSON API version seen", registry=REGISTRY
)

INPUT_LINES = Counter(
    "vtibgp_input_lines_total", "Lines read from ExaBGP, by kind", ["kind"], registry=REGISTRY
)
INPUT_REJECTED = Counter(
    "vtibgp_input_rejected_total",
    "Input lines (or parts of them) rejected, by reason",
    ["reason"],
    registry=REGISTRY,
)
LAST_UPDATE = Gauge(
    "vtibgp_last_update_timestamp_seconds",
    "Unix time of the last BGP update read from ExaBGP",
    registry=REGISTRY,
)
PEER_UP = Gauge(
    "vtibgp_peer_up", "1 while the BGP session with the peer is established", ["peer"],
    registry=REGISTRY,
)
PEER_STATE_SINCE = Gauge(
    "vtibgp_peer_state_since_timestamp_seconds",
    "Unix time of the peer's last session state change",
    ["peer"],
    registry=REGISTRY,
)
PREFIXES_RECEIVED = Counter(
    "vtibgp_prefixes_received_total", "Prefixes announced by the peer", ["peer"],
    registry=REGISTRY,
)
WITHDRAWS_RECEIVED = Counter(
    "vtibgp_withdraws_received_total", "Prefixes withdrawn by the peer", ["peer"],
    registry=REGISTRY,
)
PEER_PATHS = Gauge(
    "vtibgp_peer_paths", "Paths currently held from the peer (its Adj-RIB-In)", ["peer"],
    registry=REGISTRY,
)
PREFIXES_IGNORED = Counter(
    "vtibgp_prefixes_ignored_total",
    "Prefixes not used, by reason (unknown_peer: no configured peer with that address)",
    ["reason"],
    registry=REGISTRY,
)
ROUTES_INSTALLED = Gauge(
    "vtibgp_kernel_routes", "Routes vtibgp holds in the kernel, by role (best, backup)",
    ["role"], registry=REGISTRY,
)
ROUTE_OPS = Counter(
    "vtibgp_kernel_route_operations_total",
    "Kernel route operations, by operation and result (ok, conflict, error)",
    ["op", "result"],
    registry=REGISTRY,
)
KERNEL_ERRORS = Counter(
    "vtibgp_kernel_errors_total", "Kernel refusals, by errno name", ["errno"],
    registry=REGISTRY,
)
STALE_SWEPT = Counter(
    "vtibgp_stale_routes_removed_total",
    "Routes of an earlier run that the RIB did not confirm, removed after start-up sync",
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "vtibgp_kernel_batch_seconds",
    "Time to apply one batch of route operations to the kernel",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
UPDATE_LATENCY = Histogram(
    "vtibgp_update_to_kernel_seconds",
    "From reading an update line to the kernel acknowledging its routes",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
PEER_ROUTES = Gauge(
    "vtibgp_peer_routes", "Kernel routes through the peer, by role (best, backup)",
    ["peer", "role"], registry=REGISTRY,
)
PREFIXES_REJECTED = Counter(
    "vtibgp_prefixes_rejected_total",
    "Prefixes from the peer that import policy refused, by reason",
    ["peer", "reason"], registry=REGISTRY,
)
MAX_PREFIX_EVENTS = Counter(
    "vtibgp_peer_max_prefix_events_total",
    "Max-prefix thresholds crossed, by event (warn, limit, teardown)", ["peer", "event"],
    registry=REGISTRY,
)
PEER_MAX_PREFIXES = Gauge(
    "vtibgp_peer_max_prefixes", "The peer's configured prefix limit (0: none)", ["peer"],
    registry=REGISTRY,
)
TUNNEL_UP = Gauge(
    "vtibgp_tunnel_up",
    "1 while vtibgp routes through the tunnel device (every signal says up and the hold-down "
    "has passed)",
    ["device", "vpn"], registry=REGISTRY,
)
TUNNEL_SIGNAL_UP = Gauge(
    "vtibgp_tunnel_signal_up",
    "What each tunnel-state signal says: link (device exists, admin up, carrier), ipsec "
    "(updown notifications)",
    ["device", "signal"], registry=REGISTRY,
)
TUNNEL_SINCE = Gauge(
    "vtibgp_tunnel_state_since_timestamp_seconds", "Unix time of the tunnel's last state change",
    ["device"], registry=REGISTRY,
)
TUNNEL_TRANSITIONS = Counter(
    "vtibgp_tunnel_transitions_total", "Tunnel state changes, by new state (up, down)",
    ["device", "to"], registry=REGISTRY,
)
TUNNEL_FLAPS = Counter(
    "vtibgp_tunnel_flaps_total",
    "Tunnel downs that came while the tunnel was still in its hold-down after coming up",
    ["device"], registry=REGISTRY,
)
TUNNEL_ROUTES = Gauge(
    "vtibgp_tunnel_routes", "Kernel routes through the tunnel device, by role (best, backup)",
    ["device", "role"], registry=REGISTRY,
)
REPAIRS = Counter(
    "vtibgp_kernel_repairs_total",
    "Routes the periodic reconciliation found wrong in the kernel and repaired, by kind "
    "(missing, changed, stray, retried)",
    ["kind"], registry=REGISTRY,
)
RELOAD_OK = Gauge(
    "vtibgp_config_last_reload_successful", "1 if the last config load or reload succeeded",
    registry=REGISTRY,
)
RELOAD_TIME = Gauge(
    "vtibgp_config_last_reload_success_timestamp_seconds",
    "Unix time of the last successful config load or reload", registry=REGISTRY,
)
SYNCED = Gauge(
    "vtibgp_startup_synced",
    "1 once every peer has sent End-of-RIB (or the resync or grace timer completed)",
    registry=REGISTRY,
)


EXPORT_NETWORKS = Gauge(
    "vtibgp_export_networks", "Our networks configured to be announced (export.networks)",
    registry=REGISTRY,
)
EXPORTED = Gauge(
    "vtibgp_exported_prefixes",
    "Our networks announced to the peer (export.networks), by whether with the preferred "
    "attributes (the tunnel vtibgp uses for the connection) or the less preferred ones",
    ["peer", "preferred"], registry=REGISTRY,
)
LAN_ANNOUNCED = Gauge(
    "vtibgp_lan_announced_prefixes",
    "The cloud's prefixes announced to the LAN-side peer (export.lan_peers): those a usable "
    "tunnel carries", ["peer"], registry=REGISTRY,
)
LAN_SESSION_UP = Gauge(
    "vtibgp_lan_session_up", "1 while the BGP session with the LAN-side peer is established",
    ["peer"], registry=REGISTRY,
)
PROBE_SENT = Counter(
    "vtibgp_probe_requests_total", "Echo requests the probe sent through the tunnel device",
    ["device"], registry=REGISTRY,
)
PROBE_REPLIES = Counter(
    "vtibgp_probe_replies_total", "Echo replies that came back through the tunnel device",
    ["device"], registry=REGISTRY,
)
PROBE_LOST = Counter(
    "vtibgp_probe_lost_total", "Echo requests unanswered within a second", ["device"],
    registry=REGISTRY,
)
PROBE_RTT = Histogram(
    "vtibgp_probe_rtt_seconds", "Round-trip time of the probe's echo requests", ["device"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=REGISTRY,
)
PROBE_AVAILABLE = Gauge(
    "vtibgp_probe_available",
    "1 if the probe can send echo requests (CAP_NET_RAW or ping_group_range), 0 if it is off "
    "for lack of them (see the log), absent when the probe is disabled",
    registry=REGISTRY,
)
PROBE_ERRORS = Counter(
    "vtibgp_probe_errors_total", "Probe sends or socket opens that failed", ["device"],
    registry=REGISTRY,
)


def set_build(api_version: str) -> None:
    BUILD.info({"version": __version__, "exabgp_api": api_version})


def serve(listen: str, certfile: str | None = None, keyfile: str | None = None) -> Any:
    """Start the exporter (HTTPS when a certificate is given); returns the server, or None if
    it could not start: the daemon's job is routes, so it goes on without metrics."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        server, _thread = start_http_server(int(port), addr=host, registry=REGISTRY,
                                            certfile=certfile, keyfile=keyfile)
    except (OSError, ValueError) as e:
        log.error("metrics: cannot serve on %s: %s; continuing without metrics", listen, e)
        return None
    log.info("metrics: serving on %s://%s/metrics", "https" if certfile else "http", listen)
    return server

