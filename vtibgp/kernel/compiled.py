"""The compiled helpers of the writer's hot path, or None where they were not built.

``vtibgp.kernel._fastpack`` (C, built by setup.py where a C compiler and Python's headers are
found; optional) packs the usual route requests and computes the send order. Each has a
Python version that writes the same bytes and order (codec.RoutePacker, writer._send_order);
the writer uses the compiled one unless told not to (``compiled_packer=False``).

Owns: whether the compiled helpers exist. Must not know: what they compute (their callers').
"""

from __future__ import annotations

from collections.abc import Callable

PackRun = Callable[..., tuple[bytes, int, int]]
SendOrder = Callable[[list[object], int, int], "bool | tuple[bytes, list[object]] | None"]

pack_run: PackRun | None
send_order: SendOrder | None
try:
    from vtibgp.kernel import _fastpack
except ImportError:  # pragma: no cover - depends on the build
    pack_run = send_order = None
else:
    pack_run = _fastpack.pack_run
    send_order = _fastpack.send_order
