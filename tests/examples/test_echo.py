"""examples/echo.py: the page and the echo, as a program, in both handler forms."""

from __future__ import annotations

from ..conftest import client
from .conftest import Program, http_get


def test_echo_program(program_args: list[str]) -> None:
    with Program("echo", *program_args) as program:
        status, content_type, page = http_get(program.http_url + "/")
        assert status == 200
        assert content_type.startswith("text/html")
        assert "new WebSocket(`${scheme}://${location.host}/ws`)" in page

        ws = client(program.ws_url + "/ws")  # the `websockets` client: an independent peer
        try:
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"
            ws.send(b"\x00\xff")
            assert ws.recv(timeout=5) == b"\x00\xff"
        finally:
            ws.close()
        assert program.stop() == 0  # SIGTERM: a graceful stop, exit status 0
