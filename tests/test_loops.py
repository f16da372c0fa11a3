"""The suite runs on the loop it names (EMBEDWS_TESTS_LOOP): CI's uvloop run is on uvloop.

An application chooses uvloop by installing its policy before it serves; the
server's loop thread then makes its loop through that policy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import embedws
from embedws.aio.runtime import PassEnd

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


def test_a_failing_pass_end_callback_is_logged_and_the_others_still_run(logs: Any) -> None:
    """The loop's selector runs the pass's end: a callback that raises must not
    take the loop down, nor the callbacks after it."""
    pass_end = PassEnd()
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("boom")

    pass_end.callbacks += [lambda: ran.append("first"), fail, lambda: ran.append("last")]
    pass_end.run()
    assert ran == ["first", "last"]
    assert pass_end.callbacks == []
    record = logs.wait_for("at the end of a loop pass", level=logging.ERROR)
    assert "boom" in (record.exc_text or str(record.exc_info))
    pass_end.run()  # nothing left: nothing runs twice
    assert ran == ["first", "last"]
