"""The one text form of an IP address in vtibgp: what the C library's inet_ntop prints.

Prefixes, peers and next-hops are compared as text (RIB keys, kernel dump, gateways), so every
place that turns an address into text must spell it the same way. inet_ntop is what the
kernel-dump parser uses and what ExaBGP prints, and it differs from `ipaddress` for IPv4 inside
IPv6: inet_ntop gives "::ffff:169.254.10.1" (mapped) and "::1.2.3.4" (compatible) where
Python 3.11's ipaddress gives "::ffff:a9fe:a01" and "::102:304" (and 3.13's changed again).

The conversions come from the C socket module (_socket) but open nothing: the pure core (policy's
prefix matching) takes them from here, so that it imports no module that does I/O.
"""

from __future__ import annotations

# the C functions from the C module: `socket` would also load select and selectors
from _socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Final

__all__ = ["AF_INET", "AF_INET6", "address_text", "canonical_address", "inet_pton",
           "packed_address"]

# (family, packed bytes) -> canonical text. The C function itself, not a wrapper: the kernel
# dump calls it once or twice per route.
address_text: Final = inet_ntop


def packed_address(text: str) -> tuple[int, bytes] | None:
    """(family, packed) of an IPv4/IPv6 address text in any spelling inet_pton takes, or None."""
    family = AF_INET6 if ":" in text else AF_INET
    try:
        return family, inet_pton(family, text)
    except (OSError, ValueError):  # ValueError: NUL or surrogates in the text
        return None


def canonical_address(text: str) -> str | None:
    """`text` as address_text spells it ("FD00:0::1" -> "fd00::1"), or None if no address."""
    found = packed_address(text)
    return None if found is None else inet_ntop(*found)
