"""The docs stay true: the config table, the examples, the reference and the site's nav.

The site itself is built by ``./scripts/docs build`` (``mkdocs build --strict``) in CI; these
tests need no MkDocs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import embedws
import embedws.aio
import embedws.errors
import embedws.response
import embedws.sync
from embedws import config

from . import doc_example
from .conftest import MS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _config_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "config_table", ROOT / "scripts" / "config_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The configuration table -----------------------------------------------------------


def test_the_config_table_lists_every_key_with_its_type_and_default() -> None:
    table = _config_table().render()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(config.Config())
    assert "| `WEBSOCKET_MAX_SIZE` | `int \\| None` | `1048576` (1 MiB) |" in table
    assert '| `SYNC_HANDLER_MODE` | `str` | `"thread"` |' in table
    assert f"| {config.Config.describe('MAX_CONNECTIONS')} |" in table


def test_the_committed_config_tables_are_the_generated_one() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_table.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=30_000 * MS,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_changed_default_makes_the_committed_tables_stale(monkeypatch: Any) -> None:
    module = _config_table()
    key = config._KEYS["WEBSOCKET_TIMEOUT"]
    monkeypatch.setitem(config._KEYS, "WEBSOCKET_TIMEOUT", dataclasses.replace(key, default=7.0))
    table = module.render()
    assert "| `WEBSOCKET_TIMEOUT` | `float` | `7` |" in table
    for path in module.TARGETS:
        assert table not in path.read_text(encoding="utf-8"), path


# The examples ----------------------------------------------------------------------

EXAMPLES = doc_example.all_examples()


def test_every_python_block_of_the_readme_and_the_docs_has_a_marker() -> None:
    missing = [example.name for example in EXAMPLES if example.marker is None]
    assert not missing, f"python blocks without a <!-- doc-example: ... --> marker: {missing}"
    assert len(EXAMPLES) >= 20


def test_a_block_without_a_marker_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nprint('hi')\n```\n", encoding="utf-8")
    (example,) = doc_example.examples(page)
    assert example.marker is None
    with pytest.raises(AssertionError, match="needs a <!-- doc-example"):
        doc_example.run(dataclasses.replace(example, path=ROOT / "page.md"))


def test_an_example_that_does_not_echo_fails(tmp_path: Path) -> None:
    source = (
        "import embedws\napp = embedws.App('mute')\n"
        "@app.websocket('/ws')\ndef mute(request, ws):\n    for m in ws:\n        ws.send('no')\n"
    )
    example = doc_example.Example(ROOT / "page.md", 1, "echoes /ws", source)
    with pytest.raises(AssertionError):
        doc_example.run(example)


def test_a_program_that_prints_something_else_or_fails_fails() -> None:
    says = doc_example.Example(ROOT / "page.md", 1, 'runs, prints "yes"', "print('no')\n")
    with pytest.raises(AssertionError, match="'yes' not printed"):
        doc_example.run(says)
    fails = doc_example.Example(ROOT / "page.md", 1, "runs", "raise SystemExit(3)\n")
    with pytest.raises(AssertionError, match="exit 3"):
        doc_example.run(fails)


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.name for example in EXAMPLES])
def test_example(example: doc_example.Example) -> None:
    doc_example.run(example)


# The API reference and the site ----------------------------------------------------


def _public_names() -> list[str]:
    names = [
        f"embedws.{name}"
        for name in embedws.__all__
        if name not in {"aio", "errors", "response", "sync"}
    ]
    names += [f"embedws.sync.{name}" for name in embedws.sync.__all__]
    names += [f"embedws.aio.{name}" for name in embedws.aio.__all__]
    return names


def test_the_reference_documents_every_public_name() -> None:
    directives = set()
    for page in (DOCS / "reference").glob("*.md"):
        directives |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), re.M))
    missing = [name for name in _public_names() if name not in directives]
    assert not missing, f"no reference entry for {missing}"
    # The two modules are documented whole, every public member with them.
    assert {"embedws.errors", "embedws.response"} <= directives


def _documented(module: ModuleType) -> list[tuple[str, Any]]:
    return [
        (f"{module.__name__}.{name}", getattr(module, name))
        for name in getattr(module, "__all__", ())
        if not name.startswith("__") and not inspect.ismodule(getattr(module, name))
    ]


def test_every_public_name_states_its_thread_contract() -> None:
    objects = _documented(embedws) + _documented(embedws.sync) + _documented(embedws.aio)
    objects += _documented(embedws.response)
    words = re.compile(r"thread|event loop|on its loop", re.I)
    missing = [
        name
        for name, obj in objects
        if not (isinstance(obj, type) and issubclass(obj, BaseException))
        and not isinstance(obj, str)
        and not words.search(inspect.getdoc(obj) or "")
    ]
    assert not missing, f"docstrings without a thread contract: {missing}"
    # Exceptions are plain values: their module says so once, and their root class.
    assert "Thread contract" in (embedws.errors.__doc__ or "")
    assert "Thread contract" in (inspect.getdoc(embedws.errors.EmbedwsError) or "")


def test_no_docstring_uses_a_rest_role_or_directive() -> None:
    role = re.compile(r":(class|func|meth|attr|exc|data|mod|obj):`|^\s*\.\. \w+::", re.M)
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "embedws").rglob("*.py")
        if role.search(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"reST markup renders as literal text in the docs: {offenders}"


def test_the_site_nav_lists_every_page_and_only_real_ones() -> None:
    nav = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert nav == pages, (sorted(pages - nav), sorted(nav - pages))
