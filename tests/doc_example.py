"""The Python examples of README.md and docs/**/*.md, and how each one is run.

Each ```` ```python ```` block is preceded by an HTML comment that says how to run it:

* ``<!-- doc-example: fragment -->`` — only compiled, top-level ``await`` allowed (it refers
  to names defined elsewhere, or needs a display);
* ``<!-- doc-example: echoes /ws /feed -->`` — the block defines one ``embedws.App``; a
  top-level ``app.run(...)`` is left out, the app is served on port 0 and each path must echo
  a text and a binary message to an independent client (``websockets``);
* ``<!-- doc-example: runs -->`` or ``<!-- doc-example: runs, prints "TEXT" -->`` — the block
  is a whole program: it runs in a fresh interpreter with every ``port=N`` made ``port=0``,
  must exit 0 and, if asked, print ``TEXT``.

A block without a marker is an error, so an example cannot escape the tests.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.sync.client import connect as ws_connect

import embedws

ROOT = Path(__file__).resolve().parent.parent
MS = 0.001 * float(os.environ.get("EMBEDWS_TESTS_TIMEOUT_FACTOR", "1"))

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*doc-example:\s*(.*?)\s*-->\s*\Z", re.S)
_PRINTS = re.compile(r'^runs(?:,\s*prints\s+"(?P<text>[^"]*)")?$')
_PORT = re.compile(r"\bport=\d+")


@dataclass(frozen=True)
class Example:
    """One Python block of a Markdown file and the marker that says how to run it."""

    path: Path
    line: int
    marker: str | None  # None: no marker, which the tests refuse
    source: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def examples(path: Path) -> list[Example]:
    """Every ```` ```python ```` block of ``path``, with the marker just before it."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip()
        marker = _MARKER.search(before[before.rfind("\n") + 1 :])
        line = text.count("\n", 0, match.start()) + 1
        found.append(Example(path, line, marker and marker.group(1), match.group(1)))
    return found


def all_examples() -> list[Example]:
    return [example for path in markdown_files() for example in examples(path)]


def run(example: Example) -> None:
    """Run ``example`` as its marker says; raise AssertionError if it misbehaves."""
    assert example.marker is not None, (
        f"{example.name}: a python block needs a <!-- doc-example: ... --> marker before it"
    )
    mode, _, rest = example.marker.partition(" ")
    if mode == "fragment":
        # A fragment may show async code at the top level, as one would type it in a coroutine.
        compile(example.source, example.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    elif mode == "echoes":
        paths = rest.split()
        assert paths, f"{example.name}: 'echoes' needs at least one path"
        _check_echoes(example, paths)
    elif mode.startswith("runs"):
        prints = _PRINTS.match(example.marker)
        assert prints, f"{example.name}: unknown marker {example.marker!r}"
        _check_runs(example, prints.group("text"))
    else:
        raise AssertionError(f"{example.name}: unknown marker {example.marker!r}")


def _without_run_calls(tree: ast.Module) -> ast.Module:
    """The module without its top-level ``something.run(...)`` statements (they block)."""
    tree.body = [
        node
        for node in tree.body
        if not (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr == "run"
        )
    ]
    return tree


def _check_echoes(example: Example, paths: list[str]) -> None:
    tree = _without_run_calls(ast.parse(example.source, example.name))
    namespace: dict[str, Any] = {"__name__": "doc_example"}
    exec(compile(tree, example.name, "exec"), namespace)
    apps = [value for value in namespace.values() if isinstance(value, embedws.App)]
    assert len(apps) == 1, f"{example.name}: expected one embedws.App, found {len(apps)}"
    with apps[0].serve(port=0, GRACEFUL_SHUTDOWN_TIMEOUT=5) as server:
        for path in paths:
            with ws_connect(server.url + path, open_timeout=5000 * MS) as ws:
                ws.send("hello, é")
                assert ws.recv(timeout=5000 * MS) == "hello, é", f"{example.name}: {path}"
                ws.send(b"\x00\xff")
                assert ws.recv(timeout=5000 * MS) == b"\x00\xff", f"{example.name}: {path}"


def _check_runs(example: Example, prints: str | None) -> None:
    source = _PORT.sub("port=0", example.source)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=30_000 * MS,
        env=env,
        cwd=ROOT,
        check=False,
    )
    report = f"{example.name}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    assert "Traceback" not in result.stderr, report
    if prints is not None:
        assert prints in result.stdout, f"{example.name}: {prints!r} not printed\n{report}"
