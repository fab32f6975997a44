"""Wire UPDATEs through ExaBGP's own decoder and its JSON and `show adj-rib in extensive`
formatters, for the cases the parser tests need and the captures lack (ADD-PATH, RFC 7606,
host bits, IPv6 next-hops, confederations). Runs under ExaBGP 4.2 or 5.0:

    .venv/bin/python tests/unit/exabgp_made.py      # 5.0
    .venv42/bin/python tests/unit/exabgp_made.py    # 4.2

prints one JSON object a case: {"case", "update" (the `"update": {…}` part of the message as
ExaBGP writes it), "text" (the route lines, less the neighbor header)}. test_exabgp_input.py
holds the output as EXABGP_MADE and checks it against a fresh run when the venvs are there.
Only ExaBGP's decoding and printing run here; the session and the reactor do not.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

ADD_PATH_CASES = ("addpath-announce", "addpath-withdraw", "addpath-announce6", "addpath-withdraw6")
SEQ, SET, CSEQ, CSET = 2, 1, 3, 4  # AS_PATH segment types


def attr(flag: int, code: int, value: bytes) -> bytes:
    return struct.pack("!BBB", flag, code, len(value)) + value


def nlri(text: str, path_id: int | None = None) -> bytes:
    addr, plen_text = text.split("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    plen = int(plen_text)
    raw = bytes([plen]) + socket.inet_pton(family, addr)[: (plen + 7) // 8]
    return (b"" if path_id is None else struct.pack("!I", path_id)) + raw


def origin(value: int) -> bytes:
    return attr(0x40, 1, bytes([value]))


def as_path(*segments: tuple[int, list[int]]) -> bytes:
    body = b"".join(struct.pack("!BB", kind, len(asns)) + b"".join(struct.pack("!I", a)
                    for a in asns) for kind, asns in segments)  # fmt: skip
    return attr(0x40, 2, body)


def next_hop(address: str) -> bytes:
    return attr(0x40, 3, socket.inet_pton(socket.AF_INET, address))


def med(value: int) -> bytes:
    return attr(0x80, 4, struct.pack("!I", value))


def mp_reach6(next_hops: list[str], routes: bytes) -> bytes:
    packed = b"".join(socket.inet_pton(socket.AF_INET6, a) for a in next_hops)
    return attr(0x80, 14, struct.pack("!HBB", 2, 1, len(packed)) + packed + b"\0" + routes)


def mp_unreach6(routes: bytes) -> bytes:
    return attr(0x80, 15, struct.pack("!HB", 2, 1) + routes)


def update(withdrawn: bytes = b"", attributes: bytes = b"", announced: bytes = b"") -> bytes:
    return (struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attributes))
            + attributes + announced)  # fmt: skip


BASE = origin(0) + as_path((SEQ, [64512]))
NH = next_hop("169.254.10.1")
CASES: dict[str, bytes] = {
    "addpath-announce": update(b"", BASE + NH + med(5), nlri("10.7.0.0/24", 1)
                               + nlri("10.7.0.0/24", 2) + nlri("10.7.1.0/24", 0)),
    "addpath-withdraw": update(nlri("10.7.0.0/24", 1) + nlri("10.7.1.0/24", 0)),
    "addpath-announce6": update(b"", BASE + mp_reach6(["fd00:10::1"], nlri("2001:db8:7::/48", 3)
                                                      + nlri("2001:db8:7::/48", 4))),
    "addpath-withdraw6": update(b"", mp_unreach6(nlri("2001:db8:7::/48", 4))),
    "origin-invalid": update(b"", origin(7) + as_path((SEQ, [64512])) + NH, nlri("10.8.0.0/24")),
    "origin-missing": update(b"", as_path((SEQ, [64512])) + NH, nlri("10.8.0.0/24")),
    "nexthop-missing": update(b"", BASE, nlri("10.8.0.0/24")),
    "aspath-missing": update(b"", origin(0) + NH, nlri("10.8.0.0/24")),
    "origin-empty": update(b"", attr(0x40, 1, b"") + as_path((SEQ, [64512])) + NH,
                           nlri("10.8.0.0/24")),
    "hostbits": update(nlri("10.9.1.0/23"), BASE + NH, nlri("10.9.3.0/23")),
    "hostbits6": update(b"", BASE + mp_reach6(["fd00:10::1"], nlri("2001:db8:9:1::/63"))),
    "nh6-unspec-ll": update(b"", BASE + mp_reach6(["::", "fe80::1"], nlri("2001:db8:a::/48")
                                                  + nlri("2001:db8:b::/48"))),
    "nh6-global-ll": update(b"", BASE + mp_reach6(["fd00:10::1", "fe80::1"],
                                                  nlri("2001:db8:a::/48"))),
    "nh6-mapped": update(b"", BASE + mp_reach6(["::ffff:169.254.10.1"],
                                               nlri("::ffff:10.0.0.0/104")
                                               + nlri("::10.0.0.0/104"))),
    "confed": update(b"", origin(0) + as_path((CSEQ, [65010, 65011]), (CSET, [65012]),
                                              (SEQ, [64512, 64999]), (SET, [65001, 65002]))
                     + NH, nlri("10.10.0.0/24")),
    "confed-only": update(b"", origin(0) + as_path((CSEQ, [65010])) + NH, nlri("10.10.1.0/24")),
}


class _AddPath:
    def __init__(self, on: bool) -> None:
        self.on = on

    def receive(self, afi: object, safi: object) -> bool:
        return self.on

    send = receive


class _Negotiated:
    """What the decoders read of a session: 4-octet ASNs, both unicast families."""

    def __init__(self, add_path: bool) -> None:
        from exabgp.protocol.family import AFI, SAFI

        self.addpath = _AddPath(add_path)
        self.asn4 = True
        self.families = [(AFI.ipv4, SAFI.unicast), (AFI.ipv6, SAFI.unicast)]
        self.nexthop: list[Any] = []
        self.cached_attributes = None
        self.cached_wire = b""
        self.local_as = 65000
        self.peer_as = 64512
        self.aigp = False
        self.neighbor = None


def main() -> None:
    try:  # 4.2: the settings its modules read
        import exabgp.configuration.setup  # noqa: F401
        from exabgp.configuration.environment import environment

        environment.setup("")
    except ImportError:  # 5.0
        from exabgp.logger import log

        log.disable()
    from exabgp.bgp.message.direction import Direction
    from exabgp.bgp.message.update import Update
    from exabgp.bgp.message.update.attribute import Attribute
    from exabgp.reactor.api.response import Response
    from exabgp.rib.change import Change
    from exabgp.version import json as json_version

    try:
        from exabgp.bgp.message import Action

        announce, withdraw = Action.ANNOUNCE, Action.WITHDRAW
    except ImportError:  # 4.2
        from exabgp.bgp.message import IN

        announce, withdraw = IN.ANNOUNCED, IN.WITHDRAWN
    encoder = Response.JSON(json_version)
    for name, body in CASES.items():
        message = Update.unpack_message(body, Direction.IN, _Negotiated(name in ADD_PATH_CASES))
        if Attribute.CODE.INTERNAL_TREAT_AS_WITHDRAW in message.attributes:
            for route in message.nlris:  # as reactor/protocol.py does before the API sees it
                route.action = withdraw
        text = [Change(route, message.attributes).extensive() for route in message.nlris
                if route.action == announce]  # fmt: skip
        part = str(encoder._update(message)["message"])
        print(json.dumps({"case": name, "update": part, "text": text}))


if __name__ == "__main__":
    main()
