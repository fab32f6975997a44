"""What Linux does to routes that use nexthop objects when a device goes down (admin down,
carrier loss, unregister): the objects on it go, and with them every route through the
device; a multipath route keeps its nexthops elsewhere; a route with no device (the
fallback) stays. One statement of it for the tests' kernel stand-ins."""

from __future__ import annotations

from vtibgp.core.model import KernelRoute


def flush_device(routes: dict[tuple[str, int], KernelRoute], device: str) -> None:
    for key, route in list(routes.items()):
        left = tuple(h for h in route.nexthops if h.device != device)
        if left == route.nexthops:
            continue  # not through the device (a fallback route has no device at all)
        if left:
            routes[key] = KernelRoute(route.prefix, route.metric, left)
        else:
            del routes[key]
