"""The example pages in a real browser: headless Chromium driven by playwright-core.

``tests/browser/drive.mjs`` opens a URL in the system's Chromium, runs a list
of actions (fill, click, wait for text, read texts) and prints one JSON line
per action. ``scripts/install-system-deps`` installs Chromium (Debian's
package), and playwright-core with npm; without them these tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..conftest import serving
from .conftest import ROOT, load_example, recv_json

pytestmark = pytest.mark.browser

DRIVER_DIR = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: A whole browser run: Chromium's start (a second or two) and the actions.
DRIVE_TIMEOUT = 45


class Driver:
    """Runs ``drive.mjs``; one browser per run."""

    def __init__(self, node: str) -> None:
        self.node = node

    def start(self, url: str, actions: list[dict[str, Any]]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.node, "drive.mjs", url, json.dumps(actions)],
            cwd=DRIVER_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CHROMIUM": CHROMIUM},
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

    def run(self, url: str, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.finish(self.start(url, actions))


@pytest.fixture(scope="module")
def driver() -> Driver:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False, timeout=10
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


def test_echo_page(driver: Driver) -> None:
    app = load_example("echo").make_app()
    with serving(app) as server:
        results = driver.run(
            f"http://127.0.0.1:{server.port}/",
            [
                {"waitFor": "#status", "text": "open"},
                {"fill": "#message", "value": "hello browser"},
                {"click": "button[type=submit]"},
                {"waitFor": "#log .received", "text": "hello browser"},
                {"fill": "#message", "value": "second line"},
                {"press": "#message", "key": "Enter"},
                {"waitFor": "#log .received", "text": "second line"},
                {"texts": "#log div"},
            ],
        )
    assert texts(results) == [
        "> hello browser",
        "< hello browser",
        "> second line",
        "< second line",
    ]


def test_chat_page(driver: Driver) -> None:
    # The browser and a Python client chat in one room, each seeing the other.
    app = load_example("chat").make_app(use_async=True)
    with serving(app) as server, server.connect("/ws/chat/lobby") as python:
        python_id = recv_json(python)["client_id"]
        run = driver.start(
            f"http://127.0.0.1:{server.port}/",
            [
                {"fill": "#room", "value": "lobby"},
                {"click": "#join"},
                {"waitFor": "#status", "text": "in lobby"},
                {"fill": "#message", "value": "hello from chromium"},
                {"click": "#send"},
                {"waitFor": "#messages li", "text": "hello from python"},
                {"texts": "#messages li"},
            ],
        )
        try:
            join = recv_json(python, timeout=DRIVE_TIMEOUT)
            assert join["type"] == "join"
            browser_id = join["client_id"]
            assert recv_json(python, timeout=DRIVE_TIMEOUT) == {
                "type": "chat",
                "room": "lobby",
                "from": browser_id,
                "text": "hello from chromium",
            }
            python.send(json.dumps({"type": "chat", "text": "hello from python"}))
            # The sender gets its own message back, as every member does.
            assert recv_json(python)["text"] == "hello from python"
        finally:
            results = driver.finish(run)
        assert texts(results) == [
            f"you are {browser_id} in lobby",
            f"{browser_id}: hello from chromium",
            f"{python_id}: hello from python",
        ]
        # The browser has closed: the room says so.
        assert recv_json(python, timeout=DRIVE_TIMEOUT) == {
            "type": "leave",
            "room": "lobby",
            "client_id": browser_id,
            "clients": 1,
        }
