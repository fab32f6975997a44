"""An updown notification made into tunnel events, without a daemon."""

from __future__ import annotations

from vtibgp.config.schema import parse
from vtibgp.core.model import IpsecState
from vtibgp.shell.tunnel_request import CEASE_ADMIN_RESET, TunnelRequest, tunnel_request

P1, P2, P3 = "169.254.10.1", "169.254.11.1", "169.254.12.1"
CFG = parse({
    "peers": [{"address": P1, "interface": "vti01"}, {"address": P2, "interface": "vti09"},
              {"address": P3, "interface": "vti09"}],
    "tunnels": [{"connection": "aws-1", "device": "vti01", "teardown": True},
                {"connection": "shared-a", "peers": [P2]}],
    "metrics": {"listen": None},
}, "test.yaml")
DEVICES = {P1: "vti01", P2: "vti09", P3: "vti09"}


def request(**body: object) -> TunnelRequest | str:
    return tunnel_request(body, CFG, DEVICES.get, 7.0)


def test_a_mapped_connection_names_its_device_and_the_peers_on_it() -> None:
    req = request(state="down", connection="aws-1", verb="down-client")
    assert isinstance(req, TunnelRequest)
    assert req.events == (IpsecState("vti01", (), False, "ipsec aws-1: down-client", 7.0),)
    assert req.peers == (P1,) and req.reset and req.outside is None
    assert CEASE_ADMIN_RESET == 4


def test_on_a_shared_device_only_the_listed_peers() -> None:
    req = request(state="down", connection="shared-a", device="vti09")
    assert isinstance(req, TunnelRequest)
    assert req.events == (IpsecState(None, (P2,), False, "ipsec shared-a: down", 7.0),)
    assert req.peers == (P2,) and not req.reset  # teardown not configured


def test_an_unmapped_connection_takes_the_device_of_the_call() -> None:
    req = request(state="up", connection="other", device="vti09", outside="52.1.2.3")
    assert isinstance(req, TunnelRequest)
    assert [e.device for e in req.events] == ["vti09"] and req.peers == (P2, P3)
    assert req.outside == "52.1.2.3" and not req.reset  # reset only on down


def test_bad_requests_are_errors_that_say_what_is_expected() -> None:
    assert "expected" in str(request(state="sideways", connection="aws-1"))
    assert "expected" in str(request(state="up"))
    err = request(state="up", connection="nobody")
    assert isinstance(err, str) and "unknown connection 'nobody'" in err and "test.yaml" in err
