"""`vtibgp updown`: chained from libreswan's `leftupdown=` (after the stock `_updown`) or
strongSwan's updown, it tells the running daemon that an IPsec tunnel went up or down.

libreswan's down-client does not delete or down the VTI device: without this notification
the device looks fine while the tunnel behind it is gone. The state is keyed on the
connection name (PLUTO_CONNECTION), not PLUTO_UNIQUEID, which changes on rekey.
"""

from __future__ import annotations

import os
import sys

from vtibgp.control.client import DEFAULT_SOCKET, ControlError, request

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing costs start-up time; this module is the IPsec daemon's hook)
    from collections.abc import Mapping, Sequence
    from typing import Any

# Verbs of libreswan's and strongSwan's updown calls that mean the tunnel carries traffic or
# has stopped; the others (prepare-*, route-*, unroute-*) are not about tunnel state.
UP_VERBS = frozenset({"up-client", "up-host", "up-client-v6", "up-host-v6"})
DOWN_VERBS = frozenset({"down-client", "down-host", "down-client-v6", "down-host-v6"})


def request_from_env(env: Mapping[str, str], *, device: str | None = None,
                     connection: str | None = None) -> dict[str, Any] | None:
    """The control request for an updown call's environment, or None for verbs that are not
    about tunnel state. `device` / `connection` override what the environment says."""
    verb = env.get("PLUTO_VERB", "")
    if verb in UP_VERBS:
        state = "up"
    elif verb in DOWN_VERBS:
        state = "down"
    else:
        return None
    conn = connection or env.get("PLUTO_CONNECTION", "")
    if not conn:
        raise ValueError("PLUTO_CONNECTION is not set (and no --connection given)")
    req: dict[str, Any] = {"cmd": "tunnel", "state": state, "connection": conn, "verb": verb}
    dev = device or env.get("VTI_IFACE")
    if dev:
        req["device"] = dev
    if env.get("PLUTO_PEER"):
        req["outside"] = env["PLUTO_PEER"]  # the tunnel's outside endpoint (for the log)
    return req


USAGE = f"""usage: vtibgp updown [--socket PATH] [--device DEV] [--connection NAME] [--strict]

IPsec updown hook: tell vtibgp that a tunnel is up or down (reads PLUTO_VERB, PLUTO_CONNECTION,
VTI_IFACE and PLUTO_PEER; verbs not about tunnel state are ignored).

  --socket PATH      the daemon's control.socket (default: {DEFAULT_SOCKET})
  --device DEV       the tunnel device (default: $VTI_IFACE, else the tunnels: map of the
                     running vtibgp's config)
  --connection NAME  the connection name (default: $PLUTO_CONNECTION)
  --strict           exit 1 when vtibgp cannot be told (default: warn, exit 0)
"""

HOOK_PATH = "/usr/local/libexec/vtibgp/updown-hook"


class UsageError(ValueError):
    pass


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """The options above (argparse is not used: importing it costs more than the rest of the
    hook's start-up). Raises UsageError."""
    opts: dict[str, Any] = {"socket": DEFAULT_SOCKET, "device": None, "connection": None,
                            "strict": False, "help": False}
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in ("--socket", "--device", "--connection"):
            if not eq:
                if not args:
                    raise UsageError(f"{name} needs a value")
                value = args.pop(0)
            opts[name[2:]] = value
        elif arg == "--strict":
            opts["strict"] = True
        elif arg in ("--help", "-h"):
            opts["help"] = True
        else:
            raise UsageError(f"unknown argument {arg!r}")
    return opts


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """`vtibgp updown ARGS`. Exit 0 unless --strict: a failing hook must not break the IPsec
    daemon's tunnel set-up; 2 for a usage error."""
    try:
        opts = parse_args(argv)
    except UsageError as e:
        print(f"{USAGE}\nvtibgp updown: {e}", file=sys.stderr)
        return 2
    if opts["help"]:
        print(USAGE, end="")
        return 0
    fail = 1 if opts["strict"] else 0
    try:
        req = request_from_env(os.environ if env is None else env, device=opts["device"],
                               connection=opts["connection"])
    except ValueError as e:
        print(f"vtibgp updown: {e}", file=sys.stderr)
        return fail
    if req is None:
        return 0
    try:  # the socket from --socket or the default: no config to read on this path
        request(opts["socket"], req)
    except ControlError as e:
        print(f"vtibgp updown: {e}", file=sys.stderr)
        print(f"vtibgp updown: could not tell vtibgp that {req['connection']} is "
              f"{req['state']}", file=sys.stderr)
        return fail
    return 0


def hook() -> int:
    """The entry of the script `vtibgp install-hook` writes. A leading `updown` is skipped,
    so the script stands in for `vtibgp` in a `vtibgp updown ...` command line."""
    args = sys.argv[1:]
    if args[:1] == ["updown"]:
        del args[0]
    return main(args)


def hook_script(python: str, package_parent: str) -> str:
    """The updown hook as a script of its own: `vtibgp updown` started by `python -I -S`
    (no site-packages start-up, no environment variables read by Python), with only
    `package_parent` (the directory holding vtibgp/) added to the module path."""
    return (f"#!{python} -IS\n"
            "# vtibgp's IPsec updown hook, written by `vtibgp install-hook`: the same as\n"
            "# `vtibgp updown` (same options), started without site-packages for speed.\n"
            "# Write it again after moving or upgrading vtibgp's Python environment.\n"
            "import sys\n"
            f"sys.path.append({package_parent!r})\n"
            "from vtibgp.control.updown import hook\n"
            "sys.exit(hook())\n")
