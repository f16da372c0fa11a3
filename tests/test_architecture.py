"""docs/architecture.md stays true: it lists every module of the package, and no other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"


def test_the_architecture_page_lists_every_module_and_only_real_ones() -> None:
    listed = set(re.findall(r"`(embedws/[\w/]+\.py)`", PAGE.read_text()))
    real = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "embedws").rglob("*.py")
        if path.name != "__init__.py" or path.parent.name == "bridge"
    }
    assert not real - listed, f"modules missing from docs/architecture.md: {sorted(real - listed)}"
    assert not listed - real, (
        f"docs/architecture.md names modules that do not exist: {sorted(listed - real)}"
    )


def test_the_readme_links_the_architecture_page() -> None:
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()
