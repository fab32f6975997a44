"""The nexthop object messages, without a kernel: what is packed reads back the same (the
kernel's acceptance of them is in tests/integration/test_nexthop_objects.py)."""

from __future__ import annotations

import struct

import pytest

from vtibgp.kernel import codec as nc
from vtibgp.kernel import nexthop_codec as nhc


def test_single_nexthop_reads_back() -> None:
    msg = nhc.pack_nexthop(7, 0x56540001, nc.AF_INET, 5, "169.254.10.1", 186)
    length, mtype, flags, seq, _pid = nc.NLMSGHDR.unpack_from(msg)
    assert (length, mtype, seq) == (len(msg), nhc.RTM_NEWNEXTHOP, 7)
    assert flags & nc.NLM_F_EXCL and flags & nc.NLM_F_CREATE and flags & nc.NLM_F_ACK
    (nh,) = nhc.parse_nexthops(msg).nexthops
    assert nh == nhc.Nexthop(0x56540001, nc.AF_INET, 186, nc.RTNH_F_ONLINK, 5,
                             "169.254.10.1", (), False)
    dev_only = nhc.parse_nexthops(nhc.pack_nexthop(1, 9, nc.AF_INET6, 3, None, 186))
    assert dev_only.nexthops[0][1:6] == (nc.AF_INET6, 186, 0, 3, None)


def test_group_and_replace_and_delete() -> None:
    msg = nhc.pack_group(1, 100, [5, 6], 186)
    (nh,) = nhc.parse_nexthops(msg).nexthops
    assert (nh.id, nh.family, nh.group) == (100, 0, (5, 6))
    rep = nhc.pack_group_replace(2, 100, [6], 186)
    assert nc.NLMSGHDR.unpack_from(rep)[2] & nc.NLM_F_REPLACE
    assert nhc.parse_nexthops(rep).nexthops[0].group == (6,)
    delete = nhc.pack_nexthop_delete(3, 100)
    assert nc.NLMSGHDR.unpack_from(delete)[1] == nhc.RTM_DELNEXTHOP
    assert nhc.parse_nexthops(delete).nexthops == []  # not a NEWNEXTHOP


@pytest.mark.parametrize("call", [
    lambda: nhc.pack_nexthop(1, 0, nc.AF_INET, 5, None, 186),  # id 0
    lambda: nhc.pack_nexthop(1, 1 << 32, nc.AF_INET, 5, None, 186),
    lambda: nhc.pack_nexthop(1, 1, nc.AF_INET, 5, "fd00::1", 186),  # gateway family
    lambda: nhc.pack_nexthop(1, 1, nc.AF_INET, 0, None, 186),  # no device
    lambda: nhc.pack_group(1, 1, [], 186),
])
def test_malformed_requests_are_refused(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def test_dump_end_error_and_other_sequences() -> None:
    one = nhc.pack_nexthop(4, 11, nc.AF_INET, 5, None, 186)
    other = nhc.pack_nexthop(5, 12, nc.AF_INET, 5, None, 186)
    done = nc.NLMSGHDR.pack(20, nc.NLMSG_DONE, 0, 4, 0) + struct.pack("=i", -95)
    chunk = nhc.parse_nexthops(one + other + done, seq=4)
    assert [n.id for n in chunk.nexthops] == [11]
    assert (chunk.done, chunk.error) == (True, 95)  # EOPNOTSUPP: no nexthop objects here
