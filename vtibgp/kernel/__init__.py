"""The kernel port: everything vtibgp says to and hears from the kernel over netlink.

Parts, each using only those above it:

* codec, nexthop_codec: the bytes of route, link and nexthop-object messages (pure);
* netlink: the rtnetlink socket (options, network namespaces, requests, dumps, recvmmsg);
* linkstate: the project's one link reader (name, index, up/carrier, MTU, operational state)
  and the writer's name <-> ifindex cache;
* links: the link monitor (events through pyroute2, snapshots through linkstate) and
  discovery of a session's device;
* nexthops: our pool of kernel nexthop objects;
* acks, sender, routedump: reading acks, the pipelined packing and sending of route ops (the
  hot path), our routes read back;
* writer: KernelWriter, the route writer composed of the above (the shell's entry point).

Owns: every byte that goes to or comes from netlink. Must not know: BGP, best paths, what a
route should be (the core decides; this applies and reports, as BIRD's krt_sys layer does),
the shell, metrics.
"""
