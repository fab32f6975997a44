"""Tunnel devices as the kernel reports them: a netlink link monitor (a thread that turns
RTM_NEWLINK / RTM_DELLINK into DeviceState events) and discovery of the device that carries a
peer's BGP session.

The monitor follows events through pyroute2 (subscribed to link events only); its snapshots
(the state at start and after an overflow) and the device names are read with
:mod:`vtibgp.kernel.linkstate`, whose :func:`~vtibgp.kernel.linkstate.usability` is also the
rule applied to each event.

Owns: following link changes, finding a session's device. Must not know: routes, BGP, the
shell (events go to a sink; errors to a callback).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

from vtibgp.core.model import DeviceState
from vtibgp.kernel.linkstate import IFF_LOWER_UP, IFF_UP, read_links, usability

__all__ = ["IFF_LOWER_UP", "IFF_UP", "LinkMonitor", "find_device"]

log = logging.getLogger("vtibgp.kernel.links")


def _state(msg: Any) -> tuple[bool, str]:
    """Usable or not, and why, from a pyroute2 RTM_NEWLINK / RTM_DELLINK message."""
    if msg["event"] == "RTM_DELLINK":
        return False, "deleted"
    return usability(int(msg["flags"]))


class LinkMonitor:
    """Watches every link; `sink` gets a DeviceState whenever a device's usability changes
    (exists, administratively up, carrier). Subscribes to link events only, so bulk route
    installs cannot overflow its socket.

    A burst of link events can still overflow it (a few thousand while the reader is not
    scheduled): the kernel then drops events and the next read fails with ENOBUFS. The monitor
    opens a new socket, takes a fresh snapshot and reports every device whose state differs
    from what it last reported, so a change lost in the overflow is still seen. Each such
    recovery goes to `on_error` with its errno name (the shell counts it in
    `vtibgp_kernel_errors_total{errno="ENOBUFS"}`: metrics are not this layer's)."""

    def __init__(self, sink: Callable[[DeviceState], None],
                 on_error: Callable[[str], None] | None = None) -> None:
        self._sink = sink
        self._on_error = on_error
        self._state: dict[str, bool] = {}
        self._ip: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vtibgp-links", daemon=True)

    def snapshot(self) -> dict[str, tuple[bool, str]]:
        """Current devices (in the calling thread's namespace): usable or not, and why."""
        return {name: (link.usable, link.reason) for name, link in read_links().items()}

    def start(self, devices: set[str]) -> list[DeviceState]:
        """Subscribe, record the current state, and follow changes in the background.
        Returns DeviceState(usable=False) for each of `devices` that is missing or down."""
        # pyroute2's socket must live in the thread that reads it; it subscribes before the
        # snapshot is taken, so no change falls between the two.
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        snap = self.snapshot()
        now = time.monotonic()
        for name, (usable, _why) in snap.items():
            self._state.setdefault(name, usable)
        return [
            DeviceState(d, False, snap[d][1] if d in snap else "missing", now)
            for d in sorted(devices)
            if not snap.get(d, (False, ""))[0]
        ]

    def _open(self) -> None:
        self._ip = IPRoute()
        self._ip.bind(groups=RTMGRP_LINK)

    def _run(self) -> None:
        try:
            self._open()
        except BaseException as e:  # reported to start()
            self._error = e
            return
        finally:
            self._ready.set()
        while True:
            try:
                msgs = self._ip.get()
            except OSError as e:
                if self._closed:  # close() pulled the socket away under the read
                    return
                # ENOBUFS: events were lost. Reopen and resynchronise from a fresh snapshot.
                name = errno.errorcode.get(e.errno or 0, "unknown")
                if self._on_error is not None:
                    self._on_error(name)
                log.warning("link monitor: %s (%s); reopening and resynchronising", name,
                            "events were lost" if e.errno == errno.ENOBUFS else e)
                self._reopen()
                continue
            except Exception:  # closed at exit
                return
            for m in msgs:
                name = m.get("ifname")
                if name:
                    self._update(str(name), *_state(m))

    def _reopen(self) -> None:
        with contextlib.suppress(Exception):
            self._ip.close()
        self._open()
        if self._closed:
            self.close()
            return
        snap = self.snapshot()
        for name in set(self._state) | set(snap):
            self._update(name, *snap.get(name, (False, "missing")))

    def _update(self, name: str, usable: bool, reason: str) -> None:
        if self._state.get(name) == usable:
            return
        self._state[name] = usable
        self._sink(DeviceState(name, usable, reason, time.monotonic()))

    def close(self) -> None:
        """Stop following changes: the reader's read fails and its thread ends (it must not
        take that for an overflow and reopen)."""
        self._closed = True
        with contextlib.suppress(Exception):
            self._ip.close()


def find_device(peer: str, local: str | None) -> str | None:
    """The device holding the session's local address, else the one whose connected subnet
    contains the peer."""
    try:
        peer_ip = ipaddress.ip_address(peer)
    except ValueError:
        return None
    names = {link.index: link.name for link in read_links().values()}
    with IPRoute() as ip:
        by_subnet = None
        for a in ip.get_addr():
            addr = a.get("address")
            if addr is None:
                continue
            if local is not None and addr == local:
                return str(names.get(a["index"])) if a["index"] in names else None
            net = ipaddress.ip_interface(f"{addr}/{a['prefixlen']}").network
            if by_subnet is None and peer_ip in net and net.prefixlen < net.max_prefixlen:
                by_subnet = names.get(a["index"])
    return str(by_subnet) if by_subnet else None
