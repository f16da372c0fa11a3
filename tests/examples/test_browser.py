"""The example pages in a real browser: headless Chromium driven by playwright-core.

The driver is in ``tests/chromium.py``; without Chromium these tests skip.
"""

from __future__ import annotations

import json

import pytest

from ..chromium import DRIVE_TIMEOUT, Driver, find_driver, texts
from ..conftest import serving
from .conftest import load_example, recv_json

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def driver() -> Driver:
    return find_driver()


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
