"""The IPsec updown hook: its environment, its options, the lean JSON of the control client,
and the script `vtibgp install-hook` writes, run as the IPsec daemon would run it against a
real control socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtibgp.control import client as control_client
from vtibgp.control.server import ControlServer
from vtibgp.control.updown import UsageError, hook_script, main, parse_args, request_from_env

ROOT = Path(__file__).resolve().parents[2]
DOWN = {"PLUTO_VERB": "down-client", "PLUTO_CONNECTION": "aws-1", "VTI_IFACE": "vti01",
        "PLUTO_PEER": "203.0.113.10"}


@pytest.fixture
def server(tmp_path: Path) -> Any:
    seen: list[dict[str, Any]] = []

    def handle(req: dict[str, Any]) -> dict[str, Any]:
        seen.append(req)
        if req.get("connection") == "unknown":
            return {"error": "unknown connection 'unknown'"}
        return {"ok": True, "moved": 3}

    srv = ControlServer(str(tmp_path / "run" / "ctl.sock"), handle)
    srv.start()
    yield srv, seen
    srv.close()


def test_environment_to_request() -> None:
    assert request_from_env(DOWN) == {"cmd": "tunnel", "state": "down", "connection": "aws-1",
                                      "verb": "down-client", "device": "vti01",
                                      "outside": "203.0.113.10"}
    up = request_from_env({"PLUTO_VERB": "up-host-v6", "PLUTO_CONNECTION": "c"},
                          device="ipsec0", connection="d")
    assert up == {"cmd": "tunnel", "state": "up", "connection": "d", "verb": "up-host-v6",
                  "device": "ipsec0"}
    assert request_from_env({"PLUTO_VERB": "prepare-client"}) is None
    with pytest.raises(ValueError, match="PLUTO_CONNECTION"):
        request_from_env({"PLUTO_VERB": "down-client"})


def test_options() -> None:
    assert parse_args(["--socket=/s", "--strict", "--device", "vti02"]) == {
        "socket": "/s", "device": "vti02", "connection": None, "strict": True, "help": False}
    assert parse_args([])["socket"] == control_client.DEFAULT_SOCKET
    for bad in (["--socket"], ["--bogus"], ["extra"]):
        with pytest.raises(UsageError):
            parse_args(bad)


def test_main_tells_the_daemon_and_reports_failures(server: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    srv, seen = server
    assert main(["--socket", srv.path, "--strict"], DOWN) == 0
    assert seen[-1]["state"] == "down" and seen[-1]["device"] == "vti01"
    env = {**DOWN, "PLUTO_CONNECTION": "unknown"}
    assert main(["--socket", srv.path, "--strict"], env) == 1
    assert main(["--socket", srv.path], env) == 0  # not strict: warn only
    assert "unknown connection" in capsys.readouterr().err
    gone = str(tmp_path / "none.sock")
    assert main(["--socket", gone, "--strict"], DOWN) == 1
    assert "is vtibgp running" in capsys.readouterr().err
    assert main(["--socket", gone, "--strict"], {"PLUTO_VERB": "route-client"}) == 0
    assert main(["--nope"], DOWN) == 2
    assert main(["--help"], DOWN) == 0 and "PLUTO_VERB" in capsys.readouterr().out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@given(value=json_values)
def test_answers_read_as_json_loads_reads_them(value: object) -> None:
    text = json.dumps(value, sort_keys=True)
    assert control_client._loads(text) == json.loads(text)


def test_bad_answers_are_refused() -> None:
    for bad in ("", "{", '{"a": 1} x', "NaN", '{"a": Infinity}'):
        with pytest.raises(ValueError):
            control_client._loads(bad)


@given(req=st.dictionaries(st.text(), st.none() | st.booleans() | st.integers() | st.text()
                           | st.floats(allow_nan=False, allow_infinity=False), max_size=6))
def test_requests_are_the_json_of_json_dumps(req: dict[str, Any]) -> None:
    text = control_client.dumps(req)
    assert json.loads(text) == req
    assert text == json.dumps(req)
    assert text.isascii()


def test_installed_hook_runs_lean_against_the_daemon(server: Any, tmp_path: Path) -> None:
    """The script from `vtibgp install-hook`, run as pluto runs a hook (its own shebang, the
    `updown` word of a `vtibgp updown` line): it reaches the daemon, and its start-up imports
    neither site-packages nor the modules that make `vtibgp updown` slow."""
    srv, seen = server
    hook = tmp_path / "libexec" / "updown-hook"
    res = subprocess.run([sys.executable, "-m", "vtibgp", "install-hook", str(hook)],
                         capture_output=True, text=True, timeout=30, check=False, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert hook.read_text() == hook_script(sys.executable, str(ROOT))
    assert os.access(hook, os.X_OK)
    env = {"PATH": os.environ.get("PATH", ""), **DOWN}
    res = subprocess.run([str(hook), "updown", "--socket", srv.path, "--strict"], env=env,
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    assert seen == [request_from_env(DOWN)]
    res = subprocess.run([sys.executable, "-IS", "-X", "importtime", str(hook), "--socket",
                          srv.path], env=env, capture_output=True, text=True, timeout=30,
                         check=False)
    assert res.returncode == 0, res.stderr
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines()
                if line.startswith("import time:")}
    assert "vtibgp.control.updown" in imported
    assert not imported & {"site", "re", "json", "socket", "argparse", "typing", "enum",
                           "vtibgp.tools.cli", "vtibgp.config.schema"}, sorted(imported)
