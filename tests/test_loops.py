"""The suite runs on the loop it names (EMBEDWS_TESTS_LOOP): CI's uvloop run is on uvloop.

An application chooses uvloop by installing its policy before it serves; the
server's loop thread then makes its loop through that policy.
"""

from __future__ import annotations

import asyncio
from typing import Any

import embedws

from .conftest import TESTS_LOOP, client, seconds, serving


def test_handlers_run_on_the_loop_the_suite_names() -> None:
    app = embedws.App("loops")

    @app.websocket("/")
    async def which(request: Any, ws: Any) -> None:
        await ws.send(type(asyncio.get_running_loop()).__module__)

    with serving(app) as server, client(server.url) as c:
        module = c.recv(timeout=seconds(5))
    assert isinstance(module, str)
    assert module.startswith("uvloop") == (TESTS_LOOP == "uvloop"), module
