"""Fixtures for the lab tests: namespaces, a BIRD peer and a factory for ExaBGP gateways.

Every test here is marked ``integration`` and skipped (with the reason) unless this runs as
root, network namespaces can be created, and BIRD and ExaBGP are installed. Cleanup is
guaranteed by the fixtures' finalizers, by an ``atexit`` hook in the harness, and at the next
session start by :func:`harness.cleanup_stale` (for runs that were SIGKILLed).

ExaBGP binaries: ``VTIBGP_EXABGP`` (default: the ``exabgp`` next to this Python, the venv's
5.0.x) and ``VTIBGP_EXABGP42`` (default ``.venv42/bin/exabgp`` in the repo, else
``/tmp/venv42/bin/exabgp``; the 4.2 cases are skipped if it is missing).
With ``VTIBGP_REQUIRE_INTEGRATION=1`` (set by .ci/run) nothing is skipped: a missing
prerequisite is an error, so CI cannot go green without running these tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from lab_support import default_exabgp42

from vtibgp.lab import parts as harness

HERE = Path(__file__).resolve().parent
_skip_reason: str | None = None
_checked = False


def exabgp50() -> str:
    return os.environ.get("VTIBGP_EXABGP") or harness.default_exabgp()


def _required() -> bool:
    """CI sets VTIBGP_REQUIRE_INTEGRATION=1: then a missing tool is an error, not a skip."""
    return os.environ.get("VTIBGP_REQUIRE_INTEGRATION", "") not in ("", "0")


def _why_skip() -> str | None:
    global _checked, _skip_reason
    if _checked:
        return _skip_reason
    _checked = True
    reason: str | None = None
    if sys.platform != "linux":
        reason = "integration tests need Linux"
    elif os.geteuid() != 0:
        reason = "integration tests need root (network namespaces)"
    elif shutil.which("bird") is None or shutil.which("birdc") is None:
        reason = "BIRD 2 (`bird`, `birdc`) not found: apt-get install bird2"
    elif not os.access(exabgp50(), os.X_OK):
        reason = f"exabgp not found at {exabgp50()} (pip install '.[exabgp]' or set VTIBGP_EXABGP)"
    else:
        problem = harness.netns_usable()
        if problem:
            reason = f"network namespaces unusable: {problem}"
    _skip_reason = reason
    return reason


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [it for it in items if HERE in Path(str(it.path)).resolve().parents]
    if not mine:
        return
    reason = _why_skip()
    if reason and _required():
        raise pytest.UsageError(f"VTIBGP_REQUIRE_INTEGRATION is set but: {reason}")
    for item in mine:
        item.add_marker(pytest.mark.integration)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # keep each phase's report on the item so finalizers can tell a failed test
    rep = yield
    setattr(item, f"_vtb_rep_{rep.when}", rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(
        getattr(getattr(node, f"_vtb_rep_{w}", None), "failed", False) for w in ("setup", "call")
    )


def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def _lab_session() -> Iterator[None]:
    """Once per session: remove what aborted runs left, and turn SIGTERM into an interrupt so
    that pytest still runs the finalizers (namespaces, daemons) when CI kills it."""
    harness.cleanup_stale()
    old = signal.getsignal(signal.SIGTERM)
    if old is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        yield
    finally:
        if old is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture
def topology() -> Iterator[harness.Topology]:
    with harness.Topology() as topo:  # up() cleans up itself if it fails half-way
        yield topo


@pytest.fixture
def bird_peer(
    request: pytest.FixtureRequest, topology: harness.Topology, tmp_path: Path
) -> Iterator[harness.BirdPeer]:
    """BIRD (AS 64512) in the aws namespace, started, announcing nothing yet. Tests change
    settings with ``set_prepend`` etc.; for other hold times build a ``harness.BirdPeer``."""
    peer = harness.BirdPeer(topology, tmp_path / "bird")
    try:
        peer.start()
        yield peer
    finally:
        if _failed(request):
            print(f"--- BIRD log ({peer.workdir}) ---\n{harness.tail(peer.log_text(), 60)}")
        peer.stop()


GatewayFactory = Callable[..., harness.ExaBGPGateway]


@pytest.fixture
def exabgp_gateway(
    request: pytest.FixtureRequest, topology: harness.Topology, tmp_path: Path
) -> Iterator[GatewayFactory]:
    """Factory: ``exabgp_gateway(command, exabgp=None, **kwargs)`` builds and starts an
    :class:`harness.ExaBGPGateway` in ``topology``'s gateway namespace (kwargs as in its
    constructor). Every gateway it made is stopped afterwards."""
    made: list[harness.ExaBGPGateway] = []

    def make(
        command: Sequence[str], exabgp: str | None = None, **kwargs: Any
    ) -> harness.ExaBGPGateway:
        kwargs.setdefault("workdir", tmp_path / f"exabgp{len(made)}")
        gw = harness.ExaBGPGateway(topology, command, exabgp=exabgp or exabgp50(), **kwargs)
        made.append(gw)
        return gw.start()

    try:
        yield make
    finally:
        failed = _failed(request)
        for gw in reversed(made):
            if failed:
                print(f"--- ExaBGP log ({gw.log_path}) ---\n{harness.tail(gw.log_text(), 60)}")
            gw.stop()


@pytest.fixture(params=["5.0", "4.2"])
def exabgp_binary(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over ExaBGP 5.0 and 4.2 (skipped when no 4.2 is installed)."""
    if request.param == "5.0":
        return exabgp50()
    path = default_exabgp42()
    if path is None:
        msg = (
            "ExaBGP 4.2 not found (set VTIBGP_EXABGP42, or create .venv42 / /tmp/venv42 "
            "with exabgp==4.2.21)"
        )
        if _required():
            pytest.fail(msg)
        pytest.skip(msg)
    return path
