"""The kernel port: netlink messages (codec, nexthop_codec), the route writer with its
nexthop objects and dump of our routes (writer), and link state (links).

Owns: every byte that goes to or comes from netlink. Must not know: BGP, best paths, what a
route should be (the core decides; this applies and reports, as BIRD's krt_sys layer does).
"""
