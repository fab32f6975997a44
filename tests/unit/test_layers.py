"""The layers' import rules (each package's __init__ says what it must not know): the pure
core imports no module that does I/O and nothing of the shell; the kernel port and ExaBGP's
text layer know nothing of the shell, nor of each other. Read from the source (every import
statement, including those inside functions) and checked again in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "vtibgp"

# what the core may import: pure standard-library modules, itself, and the address spelling
CORE_ALLOWED = {
    "__future__", "bisect", "collections", "collections.abc", "dataclasses", "enum",
    "functools", "ipaddress", "itertools", "math", "operator", "typing",
    "vtibgp.addresses",
}
# modules whose presence means I/O or concurrency: none may be loaded by importing the core
IO_MODULES = {"socket", "subprocess", "threading", "select", "selectors", "logging", "os.path",
              "pyroute2", "prometheus_client", "yaml", "json", "time", "queue", "signal"}
# vtibgp packages each layer must not import
FORBIDDEN = {
    "core": ("vtibgp.shell", "vtibgp.kernel", "vtibgp.exabgp", "vtibgp.control",
             "vtibgp.config", "vtibgp.tools", "vtibgp.lab"),
    "kernel": ("vtibgp.shell", "vtibgp.exabgp", "vtibgp.control", "vtibgp.tools",
               "vtibgp.lab", "vtibgp.core.engine", "vtibgp.core.policy"),
    "exabgp": ("vtibgp.shell", "vtibgp.kernel", "vtibgp.control", "vtibgp.tools",
               "vtibgp.lab", "vtibgp.core.engine"),
    "control": ("vtibgp.shell", "vtibgp.kernel", "vtibgp.core", "vtibgp.exabgp",
                "vtibgp.config", "vtibgp.tools", "vtibgp.lab"),
    "config": ("vtibgp.shell", "vtibgp.kernel", "vtibgp.exabgp", "vtibgp.control",
               "vtibgp.tools", "vtibgp.lab", "vtibgp.core.engine"),
}

# inside the kernel port each part uses only the parts below it (the socket knows no links,
# the link reader no nexthop objects, ...): the vtibgp modules each may import
_K = "vtibgp.kernel."
KERNEL_PARTS = {
    "netlink": {_K + "codec"},
    "acks": {_K + "codec", _K + "netlink"},
    "linkstate": {_K + "codec", _K + "netlink", "vtibgp.core.model"},
    "links": {_K + "linkstate", "vtibgp.core.model"},
    "reachability": set(),
    "nexthops": {_K + "codec", _K + "nexthop_codec", _K + "netlink", _K + "linkstate",
                 "vtibgp.core.model"},
    "routedump": {_K + "codec", _K + "netlink", _K + "linkstate", "vtibgp.core.model"},
    "sender": {_K + "codec", _K + "netlink", _K + "linkstate", _K + "nexthops", _K + "acks",
               _K + "compiled", "vtibgp.core.model"},
    # whether the C helpers were built, and nothing else (no part's logic)
    "compiled": set(),
}


def imports_of(path: Path) -> set[str]:
    """Every module an import statement in `path` names (absolute; relative ones resolved)."""
    found: set[str] = set()
    package = "vtibgp." + ".".join(path.relative_to(PKG).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.rstrip(".").split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if (PKG.parent / (base + "." + alias.name).replace(".", "/")).with_suffix(
                             ".py").exists())
    return found


def modules(package: str) -> list[Path]:
    return sorted((PKG / package).glob("*.py"))


def test_the_rules_see_imports() -> None:
    """The reader finds what it must, or the rules below would pass on nothing."""
    seen = imports_of(PKG / "shell" / "daemon.py")
    assert {"vtibgp.core.engine", "vtibgp.kernel.writer", "threading"} <= seen
    assert "vtibgp.core.policy" in imports_of(PKG / "core" / "engine.py")


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_imports_only_pure_modules(path: Path) -> None:
    # (the core's own modules are each held to the same rule)
    extra = {name for name in imports_of(path) - CORE_ALLOWED
             if name != "vtibgp.core" and not name.startswith("vtibgp.core.")}
    assert not extra, f"{path.name} imports {sorted(extra)}: the core does no I/O"


@pytest.mark.parametrize(("package", "path"), [
    (package, path) for package in FORBIDDEN for path in modules(package)],
    ids=lambda v: v if isinstance(v, str) else v.name)
def test_layer_does_not_import_what_it_must_not_know(package: str, path: Path) -> None:
    bad = sorted(name for name in imports_of(path)
                 if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]))
    assert not bad, f"vtibgp/{package}/{path.name} imports {bad}"


def test_importing_the_core_loads_no_io_module() -> None:
    """In a fresh interpreter: what importing the core adds to sys.modules does no I/O (an
    import of an allowed module could still pull one in)."""
    code = ("import sys; before = set(sys.modules); "
            "import vtibgp.core.engine, vtibgp.core.policy, vtibgp.core.model; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    res = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, cwd=PKG.parent)
    loaded = set(res.stdout.split())
    assert "vtibgp.core.engine" in loaded
    bad = sorted(name for name in loaded
                 if any(name == io or name.startswith(io + ".") for io in IO_MODULES))
    assert not bad, f"importing the core loads {bad}"


@pytest.mark.parametrize("part", sorted(KERNEL_PARTS))
def test_kernel_part_imports_only_the_parts_below_it(part: str) -> None:
    ours = {name for name in imports_of(PKG / "kernel" / f"{part}.py")
            if name.startswith("vtibgp.")} - {"vtibgp.kernel"}
    extra = sorted(ours - KERNEL_PARTS[part])
    assert not extra, f"vtibgp/kernel/{part}.py imports {extra}"
