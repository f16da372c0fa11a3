"""Imports point one way: app → sync → aio → pure modules (DESIGN.md §2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "embedws"
PURE = [
    "assembler",
    "broker",
    "config",
    "errors",
    "handshake",
    "message",
    "protocol",
    "request",
    "response",
    "routing",
    "security",
    "state",
    "switches",
    "tls",
]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base]) if base else ".".join(package)
            names.add(base)
    return names


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_do_no_io_and_import_no_event_loop(name: str) -> None:
    found = imports_of(PACKAGE / f"{name}.py")
    for forbidden in ("asyncio", "anyio", "threading", "socket", "embedws.aio", "embedws.sync"):
        assert not any(n == forbidden or n.startswith(forbidden + ".") for n in found), (
            f"embedws/{name}.py imports {forbidden}"
        )


@pytest.mark.parametrize("path", sorted((PACKAGE / "aio").glob("*.py")), ids=lambda p: p.name)
def test_the_core_never_imports_the_facade_or_the_app(path: Path) -> None:
    found = imports_of(path)
    assert not any(n.startswith(("embedws.sync", "embedws.app")) for n in found), found


@pytest.mark.parametrize(
    "path", sorted((PACKAGE / "sync").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_the_facade_never_imports_the_app(path: Path) -> None:
    assert not any(n.startswith("embedws.app") for n in imports_of(path))
