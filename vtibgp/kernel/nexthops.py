"""The pool of our kernel nexthop objects (RTM_NEWNEXTHOP, Linux 5.3+): routes then carry a
nexthop id (RTA_NH_ID) instead of their devices, and the kernel drops every route through a
device at once when it deletes the device's objects (one-step failover on carrier loss).

One single object per (family, ifindex, gateway), one group per set of several; ids start at
:data:`NHID_BASE` and skip any id another owner holds (every object is read at start). An
object ours from an earlier run (our protocol id) is reused. Groups the kernel cut down (a
member's device went) stay, as orphans, until no route uses them (:meth:`collect_garbage`).

Owns: which objects exist and are ours, creating and deleting them, and the ids routes use.
Must not know: which routes should exist, device names (it works on ifindexes; the link cache
translates), BGP.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from vtibgp.core.model import NextHop
from vtibgp.kernel import codec as nc
from vtibgp.kernel import nexthop_codec as nhc
from vtibgp.kernel.linkstate import LinkCache
from vtibgp.kernel.netlink import Rtnl

log = logging.getLogger("vtibgp.kernel.nexthops")

COMPAT_MODE = "/proc/sys/net/ipv4/nexthop_compat_mode"

# Our nexthop object ids start here ("VT"), well above the small ids `ip nexthop` users and
# routing daemons tend to pick; any id another owner holds is skipped (read at start).
NHID_BASE = 0x56540000
_CACHE_MAX = 65536

# A nexthop object as the pool keys it: (for IPv6 routes?, hops); one hop = a single
# nexthop, several = a group of the single ones.
NhKey = tuple[bool, tuple[nc.Hop, ...]]


class NotMade(Exception):
    """No object of ours for `key` yet: make it (NexthopPool.make), then ask again."""

    def __init__(self, key: NhKey) -> None:
        super().__init__(key)
        self.key = key


class ObjectRefused(ValueError):
    """The kernel refused, in the running call, to make the object a route needs."""

    def __init__(self, err: int) -> None:
        super().__init__()
        self.err = err


def compat_mode(nl: Rtnl) -> str | None:
    """net.ipv4.nexthop_compat_mode in the namespace of `nl`; None where the kernel predates
    it (and always dumps the nexthops)."""
    def read() -> str:
        with open(COMPAT_MODE, encoding="ascii") as f:
            return f.read().strip()

    try:
        return nl.in_namespace(read)
    except OSError:
        return None


class NexthopPool:
    """Our nexthop objects in the namespace of `nl`, for routes of `table` and `proto`.
    The owner serialises calls. `enabled` says whether routes use objects (see enable)."""

    def __init__(self, nl: Rtnl, table: int, proto: int, links: LinkCache) -> None:
        self._nl = nl
        self._table = table
        self._proto = proto
        self._links = links
        self.enabled = False
        self.refusal = ""  # why enable() said no
        # ours by key, their contents, every id taken by anyone, objects the kernel refused
        # in the running call (`failed`), and groups the kernel cut down that routes may
        # still use (`_orphans`)
        self._key: dict[NhKey, int] = {}
        self._single: dict[int, tuple[bool, nc.Hop]] = {}
        self._group: dict[int, tuple[bool, tuple[int, ...]]] = {}
        self._taken: set[int] = set()
        self._next = NHID_BASE
        self.failed: dict[NhKey, int] = {}
        self._orphans: set[int] = set()
        # (id of a NextHop tuple, IPv6?) -> (the tuple, its object id); see object_for
        self._cache: dict[tuple[int, bool], tuple[tuple[NextHop, ...], int]] = {}

    # ------------------------------------------------------------------ reading

    def enable(self) -> bool:
        """Route through kernel nexthop objects from now on, if the kernel has them: read
        every object (ours are reused, everyone's ids avoided). False (and inline nexthops
        stay) if the kernel does not know RTM_GETNEXTHOP."""
        self.refusal = ""
        try:
            found = self.dump()
        except OSError as exc:
            self.refusal = f"this kernel has no nexthop objects ({exc})"
            log.info("kernel: no nexthop objects (%s); routes carry their nexthops inline", exc)
            return False
        if compat_mode(self._nl) == "0":
            # route dumps would then show a route's nexthop object id but not its device
            # or gateway: our start-up adoption and the periodic repair need those
            self.refusal = ("net.ipv4.nexthop_compat_mode is 0 (route dumps would not show "
                            "the nexthops of routes using objects)")
            log.warning("kernel: %s; routes carry their nexthops inline. Set it to 1 for "
                        "nexthop objects (one-step failover on carrier loss)", self.refusal)
            return False
        self.load(found)
        self.enabled = True
        log.info("kernel: routes use nexthop objects (%d of ours found)", self.count())
        return True

    def dump(self) -> list[nhc.Nexthop]:
        """Every nexthop object in the namespace, whoever owns it."""
        out: list[nhc.Nexthop] = []

        def take(n: int, seq: int) -> tuple[bool, int]:
            chunk = nhc.parse_nexthops(self._nl.rbuf, n, seq=seq)
            out.extend(chunk.nexthops)
            return chunk.done, chunk.error

        self._nl.dump(nhc.pack_nexthop_dump_request, take, "nexthop dump")
        return out

    def load(self, found: list[nhc.Nexthop]) -> None:
        """Rebuild the pool from a dump of every nexthop object."""
        self._cache.clear()
        self._key.clear()
        self._single.clear()
        self._group.clear()
        self._taken = {nh.id for nh in found}
        for nh in found:
            if nh.protocol != self._proto or nh.blackhole:
                continue
            if nh.group:
                self._group[nh.id] = (False, nh.group)  # family fixed below
            elif nh.ifindex:
                v6 = nh.family == nc.AF_INET6
                hop = nc.Hop(nh.ifindex, nh.gateway)
                self._single[nh.id] = (v6, hop)
                self._key.setdefault((v6, (hop,)), nh.id)
        for gid, (_v6, members) in list(self._group.items()):
            parts = [self._single.get(m) for m in members]
            if any(p is None for p in parts):
                continue  # not made of ours alone: never reused
            v6 = all(p[0] for p in parts if p is not None)
            self._group[gid] = (v6, members)
            hops = tuple(p[1] for p in parts if p is not None)
            self._key.setdefault((v6, hops), gid)
        # groups not reused (duplicates, cut down, foreign members) go once no route uses them
        self._orphans = set(self._group) - set(self._key.values())

    def reload(self) -> None:
        """Read every object again (one of ours may have gone behind our back)."""
        self.load(self.dump())
        self.failed = {}

    def count(self) -> int:
        """Nexthop objects of ours the pool knows."""
        return len(self._single) + len(self._group)

    def clear_cache(self) -> None:
        """Forget the ids looked up by NextHop tuple (device ifindexes may have changed)."""
        self._cache.clear()

    def route_nhids(self) -> set[int]:
        """The nexthop ids our routes use, from a route dump."""
        used: set[int] = set()

        def take(n: int, seq: int) -> tuple[bool, int]:
            ids, done, error = nhc.parse_route_nhids(self._nl.rbuf, n, seq=seq)
            used.update(ids)
            return done, error

        self._nl.dump_routes(self._table, self._proto, take)
        return used

    # ------------------------------------------------------------------ the routes' ids

    def object_for(self, nexthops: tuple[NextHop, ...], v6: bool) -> int:
        """The id of our nexthop object for `nexthops` in that family. Cached by the tuple's
        identity (the core shares one tuple per path), so most look-ups skip building the
        key. Raises NotMade if there is none yet, ObjectRefused if the kernel refused to make
        it in this call, Unresolved if a device is not in the link cache."""
        cache = self._cache
        hit = cache.get((id(nexthops), v6))
        if hit is not None and hit[0] is nexthops:
            return hit[1]
        key = (v6, self._links.hops(nexthops))
        found = self._key.get(key)
        if found is None:
            if key in self.failed:
                raise ObjectRefused(self.failed[key])
            raise NotMade(key)
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[(id(nexthops), v6)] = (nexthops, found)
        return found

    def make(self, key: NhKey) -> None:
        """Create the object for `key` (and its members): recorded in the pool, or its errno
        in `failed` so that the routes needing it are refused with it."""
        v6, hops = key
        if any(h.gateway and (":" in h.gateway) != v6 for h in hops):
            self.failed[key] = errno.EINVAL  # as inline: no gateway of the other family
            return
        members: list[int] = []
        for hop in hops:
            nhid = self._key.get((v6, (hop,)))
            if nhid is None:
                nhid, err = self._make_single(v6, hop)
                if err:
                    self.failed[key] = err
                    return
            members.append(nhid)
        if len(hops) == 1:
            return

        def build_group(seq: int, new: int) -> bytes:
            return nhc.pack_group(seq, new, members, self._proto)

        gid, err = self._create(build_group, "nexthop group")
        if err:
            self.failed[key] = err
            return
        self._key[key] = gid
        self._group[gid] = (v6, tuple(members))

    def _make_single(self, v6: bool, hop: nc.Hop) -> tuple[int, int]:
        """Create the single object for `hop`: (its id, 0) or (0, errno)."""
        gw = hop.gateway
        family = (nc.AF_INET6 if ":" in gw else nc.AF_INET) if gw else (
            nc.AF_INET6 if v6 else nc.AF_INET)

        def build(seq: int, new: int) -> bytes:
            return nhc.pack_nexthop(seq, new, family, hop.ifindex, hop.gateway, self._proto)

        nhid, err = self._create(build, f"nexthop via ifindex {hop.ifindex}")
        if not err:
            self._key[(v6, (hop,))] = nhid
            self._single[nhid] = (v6, hop)
        return nhid, err

    def _new_id(self) -> int:
        nhid = self._next
        while nhid in self._taken:
            nhid += 1
        if nhid > 0xFFFFFFFF:
            raise OSError(errno.ENOSPC, "no free nexthop id")
        self._next = nhid + 1
        self._taken.add(nhid)
        return nhid

    def _create(self, build: Callable[[int, int], bytes], what: str) -> tuple[int, int]:
        """Create one object with a fresh id: (id, 0) or (0, errno)."""
        for _attempt in range(8):
            nhid = self._new_id()
            seq = self._nl.take_seqs(1)
            acks = self._nl.request(build(seq, nhid), seq, what)
            if acks is None:
                return 0, errno.ENOBUFS
            err = acks[0].error
            if err == errno.EEXIST:
                continue  # someone took this id meanwhile: the next one
            if err:
                if acks[0].message:
                    log.info("kernel: %s refused: %s (%s)", what, os.strerror(err),
                             acks[0].message)
                return 0, err
            return nhid, 0
        return 0, errno.EEXIST

    def _delete(self, nhid: int) -> int:
        """Delete object `nhid`: 0, or the errno (ENOENT: it was gone already)."""
        seq = self._nl.take_seqs(1)
        acks = self._nl.request(nhc.pack_nexthop_delete(seq, nhid), seq, "nexthop delete")
        return acks[0].error if acks else errno.ENOBUFS

    # ------------------------------------------------------------------ devices going

    def flush_device(self, index: int, name: str) -> bool:
        """Delete our objects on device `index` (routes using one go with it; groups lose it
        as a member). False if the kernel refused a delete (the pool is then read again)."""
        doomed = [i for i, (_v6, hop) in self._single.items() if hop.ifindex == index]
        failed = 0
        for nhid in doomed:
            err = self._delete(nhid)
            if err not in (0, errno.ENOENT):
                failed += 1
                log.warning("kernel: deleting nexthop %d on %s: %s", nhid, name,
                            os.strerror(err))
        if failed:
            self.load(self.dump())
            return False
        self.drop_device(index)
        return True

    def drop_device(self, index: int) -> None:
        """Forget our objects on device `index`: the kernel deleted them with the device's
        routes (a group keeps its other members, and becomes an orphan)."""
        gone = {i for i, (_v6, hop) in self._single.items() if hop.ifindex == index}
        if not gone:
            return
        self._cache.clear()
        for nhid in gone:
            del self._single[nhid]
        for gid, (v6, members) in list(self._group.items()):
            if not gone.intersection(members):
                continue
            left = tuple(m for m in members if m not in gone)
            if not left:
                del self._group[gid]  # the kernel removed the emptied group too
                self._orphans.discard(gid)
                continue
            # the kernel kept the group with the members left; routes may still use it
            self._group[gid] = (v6, left)
            self._orphans.add(gid)
        self._key = {k: i for k, i in self._key.items()
                     if i not in gone and i not in self._orphans}
        self._taken -= gone

    def collect_garbage(self) -> int:
        """Delete the cut-down groups (see drop_device) that no route uses any more; how
        many went. Cheap when there are none (the usual case)."""
        if not self._orphans:
            return 0
        used = self.route_nhids()
        removed = 0
        for gid in sorted(self._orphans - used):
            if self._delete(gid) in (0, errno.ENOENT):
                self._orphans.discard(gid)
                self._group.pop(gid, None)
                self._taken.discard(gid)
                removed += 1
        return removed

    def release(self) -> int:
        """Delete every object of ours that no route uses (at exit, after our routes were
        withdrawn). Returns how many went."""
        if not self.enabled:
            return 0
        used = self.route_nhids()
        if used & set(self._single):
            # a route still uses one of our single nexthops: keep those and their groups
            log.info("kernel: %d of our nexthop objects still in use; kept",
                     len(used & set(self._single)))
        groups = [g for g in self._group if g not in used]
        singles = [i for i in self._single if i not in used and not any(
            i in members for g, (_v6, members) in self._group.items() if g in used)]
        return sum(self._delete(nhid) in (0, errno.ENOENT) for nhid in groups + singles)
