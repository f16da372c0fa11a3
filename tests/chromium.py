"""Headless Chromium for tests: the system's Chromium driven by playwright-core.

``tests/browser/drive.mjs`` opens a URL, runs a list of actions (fill, click,
wait for text, read texts) and prints one JSON line per action.
``scripts/install-system-deps`` installs Chromium (Debian's package) and
playwright-core with npm; without them the browser tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import seconds

ROOT = Path(__file__).resolve().parent.parent

DRIVER_DIR = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: A whole browser run: Chromium's start (a second or two) and the actions.
DRIVE_TIMEOUT = seconds(45)


class Driver:
    """Runs ``drive.mjs``; one browser per run."""

    def __init__(self, node: str) -> None:
        self.node = node

    def start(
        self, url: str, actions: list[dict[str, Any]], *, args: list[str] | None = None
    ) -> subprocess.Popen[str]:
        """Start a browser run; ``args`` are extra Chromium flags."""
        env = {**os.environ, "CHROMIUM": CHROMIUM, "CHROMIUM_ARGS": json.dumps(args or [])}
        return subprocess.Popen(
            [self.node, "drive.mjs", url, json.dumps(actions)],
            cwd=DRIVER_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def finish(self, run: subprocess.Popen[str]) -> list[dict[str, Any]]:
        """The JSON lines of a run, once it ended; fails if a step failed."""
        try:
            out, err = run.communicate(timeout=DRIVE_TIMEOUT)
        except subprocess.TimeoutExpired:
            run.kill()
            out, err = run.communicate()
            pytest.fail(f"the browser run did not finish:\n{out}\n{err}")
        results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        failed = [r for r in results if r.get("ok") is False]
        assert run.returncode == 0 and not failed, f"{failed or results}\n{err}"
        return results

    def run(
        self, url: str, actions: list[dict[str, Any]], *, args: list[str] | None = None
    ) -> list[dict[str, Any]]:
        return self.finish(self.start(url, actions, args=args))


def find_driver() -> Driver:
    """The driver, or a skip saying what is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False, timeout=seconds(10)
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        pytest.skip(f"playwright-core needs Node 20 or newer, this is {version or 'unknown'}")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/install-system-deps installs it)")
    if not (DRIVER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip(
            "playwright-core is not installed (scripts/install-system-deps runs npm install)"
        )
    return Driver(node)


def texts(results: list[dict[str, Any]]) -> list[str]:
    """The texts the last ``texts`` action read."""
    found: list[str] = [r["texts"] for r in results if "texts" in r][-1]
    return found
