"""What the core believes the kernel holds, and keeping that belief true.

Per prefix, its routes as one shared "shape" (metric, nexthops pairs): most prefixes share
their shape with many others. Around it, the bookkeeping of the kernel sync, as BIRD's krt
keeps it apart from its tables: the routes of an earlier run adopted at start and not yet
confirmed (`stale`), adopted routes the filling RIB would change before the sync is complete
(`deferred`), what the kernel took away by itself (`lost`), places another owner's route
holds (`conflicts`), the start-up sweep, the kernel's refusals and the periodic comparison.

Knows nothing of paths, best paths or tunnels: whether a route's nexthops go into a usable
tunnel is asked through the `live` callable the core passes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping

from vtibgp.core.model import KernelRoute, NextHop, OpKind, Prefix, RouteOp, kernel_route, route_op

# The routes of one prefix, as (metric, nexthops) pairs: the kernel routes without the prefix.
# What the core installs for a prefix depends on it only through its family, so prefixes with
# the same candidate paths share one shape object (and one nexthops tuple per route).
Shape = tuple[tuple[int, tuple[NextHop, ...]], ...]
Steps = list[tuple[OpKind, int, tuple[NextHop, ...]]]  # route ops of one prefix, without it
Live = Callable[[tuple[NextHop, ...]], bool]  # whether nexthops go into usable tunnels
ESRCH, ENOENT, EEXIST = 3, 2, 17


class Installed(Mapping[Prefix, dict[int, KernelRoute]]):
    """What the core believes the kernel holds, per prefix keyed by metric: a read-only view
    of its compact store (one shared shape per prefix). Each look-up builds the routes."""

    __slots__ = ("_shapes",)

    def __init__(self, shapes: dict[Prefix, Shape]) -> None:
        self._shapes = shapes

    def __getitem__(self, prefix: Prefix) -> dict[int, KernelRoute]:
        return {metric: kernel_route(prefix, metric, hops)
                for metric, hops in self._shapes[prefix]}

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._shapes

    def __iter__(self) -> Iterator[Prefix]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


class KernelState:
    def __init__(self, stats: Counter[str]) -> None:
        self.shapes: dict[Prefix, Shape] = {}
        self.stale: set[tuple[Prefix, int]] = set()  # adopted, not confirmed yet
        self.deferred: set[tuple[Prefix, int]] = set()  # adopted, kept as they were until sync
        # prefixes whose routes the kernel took away by itself (KernelFlushed): decided again
        # once the event that caused the flush is in
        self.lost: set[Prefix] = set()
        # (prefix, metric) an ADD of ours found another owner's route at: left alone (never
        # overwritten) until the prefix's routes change; the periodic scan does not retry it
        self.conflicts: set[tuple[Prefix, int]] = set()
        self.synced = True  # becomes False when there is something to reconcile
        self.stats = stats

    # ---------------------------------------------------------------- reading

    def routes(self) -> Iterator[KernelRoute]:
        for prefix, shape in self.shapes.items():
            for metric, hops in shape:
                yield kernel_route(prefix, metric, hops)

    def route_count(self) -> int:
        return sum(map(len, self.shapes.values()))

    def hop_roles(self, best: int) -> dict[NextHop, list[int]]:
        """For every nexthop in use: [routes at metric `best`, routes at other metrics]
        through it. Counted per shape, not per route: a million prefixes share a few."""
        shapes = list(self.shapes.values())
        uses = Counter(map(id, shapes))
        by_id = dict(zip(map(id, shapes), shapes, strict=True))
        counts: dict[NextHop, list[int]] = {}
        for key, n in uses.items():
            for metric, hops in by_id[key]:
                role = 0 if metric == best else 1
                for hop in hops:
                    counts.setdefault(hop, [0, 0])[role] += n
        return counts

    # ---------------------------------------------------------------- steps

    def steps(self, prefix: Prefix, have: Shape, want: Shape, live: Live) -> tuple[Steps, Shape]:
        """The ops from the routes `have` to the routes `want` of `prefix` (as kind, metric,
        nexthops), and the routes held after them: `want`, and the unconfirmed leftovers of
        an earlier run, which are kept until the sweep."""
        stale, deferred = self.stale, self.deferred
        steps: Steps = []
        held = dict(have)
        kept_old: dict[int, tuple[NextHop, ...]] = {}
        for metric, hops in want:
            old = held.get(metric)
            if old is None:
                steps.append((OpKind.ADD, metric, hops))
            elif old is not hops and old != hops:
                key = (prefix, metric)
                if not self.synced and (key in stale or key in deferred) and live(old):
                    # An adopted route that the RIB, still filling, would change: while the
                    # peers re-send their tables the best path may flip and flip back, so the
                    # route stays as the earlier run left it, and is judged at the sweep.
                    kept_old[metric] = old
                    deferred.add(key)
                else:
                    steps.append((OpKind.REPLACE, metric, hops))
                    deferred.discard(key)
            elif deferred:
                deferred.discard((prefix, metric))
            if stale:
                stale.discard((prefix, metric))
        if kept_old:
            want = tuple((m, kept_old.get(m, h)) for m, h in want)
        wanted = {metric for metric, _ in want}
        kept: list[tuple[int, tuple[NextHop, ...]]] = []
        for metric, hops in have:
            if metric in wanted:
                continue
            key = (prefix, metric)
            if not self.synced and (key in stale or key in deferred) and live(hops):
                kept.append((metric, hops))
                continue
            if stale:
                stale.discard(key)
            deferred.discard(key)
            steps.append((OpKind.DELETE, metric, hops))
        return steps, want + tuple(kept) if kept else want

    # ---------------------------------------------------------------- start-up

    def adopt(self, routes: Iterable[KernelRoute]) -> set[Prefix]:
        """Take over our routes left in the kernel by an earlier run: held as they are until
        the RIB confirms them (the unconfirmed ones go at the sweep). Returns their prefixes."""
        found: dict[Prefix, dict[int, tuple[NextHop, ...]]] = {}
        for r in routes:
            per_metric = found.get(r.prefix)
            if per_metric is None:
                per_metric = found[r.prefix] = dict(self.shapes.get(r.prefix, ()))
            per_metric[r.metric] = r.nexthops
            self.stale.add(r.key)
        shapes: dict[Shape, Shape] = {}  # prefixes with the same routes share one shape
        for prefix, per_metric in found.items():
            shape = tuple(per_metric.items())
            self.shapes[prefix] = shapes.setdefault(shape, shape)
        if self.stale:
            self.synced = False
        return set(found)

    def adopted_dead(self, live: Live) -> set[Prefix]:
        """Prefixes with an adopted route kept until sync (unconfirmed, or deferred: one the
        RIB would change) into a tunnel that is not usable."""
        inst = self.shapes
        dead = {prefix for prefix, metric in self.stale
                if any(m == metric and not live(hops) for m, hops in inst.get(prefix, ()))}
        dead.update(prefix for prefix, metric in self.deferred
                    if any(m == metric and not live(hops) for m, hops in inst.get(prefix, ())))
        return dead

    def sweep(self) -> tuple[list[RouteOp], list[Prefix]] | None:
        """The sync is complete: the unconfirmed routes go. Returns their deletes and the
        prefixes of the deferred ones (to decide now), or None if already synced."""
        if self.synced:
            return None
        self.synced = True
        ops: list[RouteOp] = []
        inst = self.shapes
        for prefix, metric in sorted(self.stale):
            shape = inst.get(prefix, ())
            left = tuple(r for r in shape if r[0] != metric)
            if len(left) == len(shape):
                continue
            hops = next(h for m, h in shape if m == metric)
            ops.append(route_op(OpKind.DELETE, prefix, metric, hops))
            if left:
                inst[prefix] = left
            else:
                del inst[prefix]
        self.stale.clear()
        self.stats["stale_routes_swept"] += len(ops)
        deferred, self.deferred = self.deferred, set()
        return ops, sorted({prefix for prefix, _ in deferred})

    # ---------------------------------------------------------------- what the kernel did

    def flushed(self, device: str) -> None:
        """Believe what the kernel did: routes through `device` are gone, multipath ones
        lost that nexthop. The signal that follows decides what to install instead."""
        inst = self.shapes
        # what becomes of each shape (shared by many prefixes), computed once per shape
        done: dict[int, tuple[Shape, Shape, list[int]]] = {}
        for prefix, shape in list(inst.items()):
            hit = done.get(id(shape))
            if hit is None:
                kept: list[tuple[int, tuple[NextHop, ...]]] = []
                gone: list[int] = []
                for metric, hops in shape:
                    left = tuple(h for h in hops if h.device != device)
                    if len(left) == len(hops):  # not through it (the fallback: no device)
                        kept.append((metric, hops))
                    elif left:
                        kept.append((metric, left))
                    else:
                        gone.append(metric)
                after = tuple(kept)
                # the old shape is held by the entry, so its id is not reused meanwhile
                hit = done[id(shape)] = (shape, shape if after == shape else after, gone)
            _, after, gone = hit
            if after is shape:
                continue
            if self.stale or self.deferred:
                for metric in gone:
                    self.stale.discard((prefix, metric))
                    self.deferred.discard((prefix, metric))
            if not self.synced:
                # an adopted route kept until sync may have gone while the RIB holds a usable
                # path elsewhere: decided again after the signal (once synced, every route
                # through the device is its peers', which the signal recomputes anyway)
                self.lost.add(prefix)
            if after:
                inst[prefix] = after
            else:
                del inst[prefix]
        self.stats["kernel_flushes"] += 1

    def forget(self, route: KernelRoute) -> None:
        """The kernel does not hold `route` (an ADD that did not happen): not installed."""
        inst = self.shapes
        per_metric = dict(inst.get(route.prefix, ()))
        if per_metric.get(route.metric) == route.nexthops:
            del per_metric[route.metric]
            if per_metric:
                inst[route.prefix] = tuple(per_metric.items())
            else:
                del inst[route.prefix]

    def failed(self, op: RouteOp, errno: int) -> list[RouteOp]:
        """The kernel refused `op`: believe what it holds instead; the ops that follow."""
        route, kind = op.route, op.kind
        self.stats[f"route_failed_{kind.value}"] += 1
        inst = self.shapes
        per_metric = dict(inst.get(route.prefix, ()))
        if kind is OpKind.DELETE:
            # Still in the kernel: keep knowing it, so the next change of this prefix (or a
            # reconcile) removes it again rather than forgetting a route we own.
            if route.metric not in per_metric:
                per_metric[route.metric] = route.nexthops
                inst[route.prefix] = tuple(per_metric.items())
            return []
        if kind is OpKind.REPLACE and errno not in (ESRCH, ENOENT):
            # refused for another reason (ENOMEM, ENOBUFS, a device race): our route is still
            # there with its old nexthops. Believing the new ones keeps its place known to be
            # ours, and the periodic scan finds it 'changed' and replaces it again.
            return []
        self.forget(route)
        if kind is OpKind.ADD and errno == EEXIST:
            self.stats["route_conflicts"] += 1  # another owner holds prefix+metric: leave it
            self.conflicts.add(route.key)
            return []
        if kind is OpKind.REPLACE and errno in (ESRCH, ENOENT):
            per_metric[route.metric] = route.nexthops
            inst[route.prefix] = tuple(per_metric.items())
            return [RouteOp(OpKind.ADD, route)]
        return []

    def compare(self, kernel: Iterable[KernelRoute], kinds: Counter[str]) -> list[RouteOp]:
        """What the kernel holds of ours against what we believe: routes it lost are added
        back ("missing"), changed ones replaced ("changed"), ones we do not hold removed
        ("stray"); counted into `kinds`."""
        seen = {r.key: r for r in kernel}
        # an EEXIST whose place the dump shows as ours was our own route, not another owner's
        self.conflicts.difference_update(seen)
        ops: list[RouteOp] = []
        for route in self.routes():
            found = seen.pop(route.key, None)
            if found is None:
                ops.append(RouteOp(OpKind.ADD, route))
                kinds["missing"] += 1
            elif found.nexthops != route.nexthops:
                ops.append(RouteOp(OpKind.REPLACE, route))
                kinds["changed"] += 1
        for route in seen.values():
            ops.append(RouteOp(OpKind.DELETE, route))
            kinds["stray"] += 1
        return ops

    def withdraw_all(self) -> list[RouteOp]:
        """Every route we hold, as deletes."""
        ops = [RouteOp(OpKind.DELETE, r) for r in self.routes()]
        self.shapes.clear()
        self.stale.clear()
        return ops
