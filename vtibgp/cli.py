"""The `vtibgp` command: run (the ExaBGP process), check-config."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys

from . import __version__
from .config import Config, ConfigError, load

DEFAULT_CONFIG = "/etc/vtibgp/vtibgp.yaml"


def setup_logging(level: str, use_syslog: bool) -> None:
    """One line per event on stderr (ExaBGP copies the plugin's stderr into its own log)."""
    root = logging.getLogger("vtibgp")
    root.handlers.clear()
    root.setLevel(level.upper())
    root.propagate = False
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(logging.Formatter(f"vtibgp[{os.getpid()}] %(levelname)s %(message)s"))
    root.addHandler(err)
    if use_syslog and os.path.exists("/dev/log"):
        sl = logging.handlers.SysLogHandler(address="/dev/log")
        sl.setFormatter(logging.Formatter("vtibgp[%(process)d]: %(levelname)s %(message)s"))
        root.addHandler(sl)


def _load(path: str) -> Config | None:
    try:
        return load(path)
    except ConfigError as e:
        print(f"vtibgp: config error: {e}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    setup_logging(args.log_level or cfg.log_level, cfg.syslog)
    from .daemon import run

    return run(cfg, dry_run=args.dry_run)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    print(f"{args.config}: ok ({len(cfg.peers)} peers)")
    for p in cfg.peers:
        dev = p.interface or "(discovered)"
        gw = ", via next-hop" if p.gateway else ""
        fams = " ".join(f.split()[0] for f in p.families)
        print(f"  peer {p.address}: device {dev}{gw}, preference {p.preference}, {fams}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vtibgp", description=__doc__)
    ap.add_argument("--version", action="version", version=f"vtibgp {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run as ExaBGP's process (reads ExaBGP JSON on stdin)")
    run.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    run.add_argument("--dry-run", action="store_true",
                     help="print the kernel operations instead of making them (no root needed)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="validate a config file and exit")
    chk.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    chk.set_defaults(func=cmd_check_config)

    args = ap.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
