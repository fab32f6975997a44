"""The decision core: pure, I/O-free.

Owns: the values that cross into and out of it (model), the import policy (policy), and the
Adj-RIB-In, best path, tunnel signals and the routes it believes installed (engine), and
which of the kernel's late refusals it is told of (inflight).
Must not know: files, sockets, netlink, ExaBGP's text, the clock (time comes in events),
logging or metrics. tests/unit/test_layers.py holds it to that: nothing here imports a
module that does I/O, nor anything of the shell.
"""
