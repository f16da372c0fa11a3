"""examples/echo.py: the page and the echo, as a program, in both handler forms."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from ..conftest import client, seconds
from .conftest import Program, http_get


def test_echo_program(program_args: list[str]) -> None:
    with Program("echo", *program_args) as program:
        status, content_type, page = http_get(program.http_url + "/")
        assert status == 200
        assert content_type.startswith("text/html")
        assert "new WebSocket(`${scheme}://${location.host}/ws`)" in page
        # The page is a file served by app.static: revalidated, and cached by its ETag.
        request = urllib.request.Request(program.http_url + "/index.html")
        with urllib.request.urlopen(request, timeout=seconds(5)) as answer:
            etag = answer.headers["ETag"]
            assert answer.headers["Cache-Control"] == "no-cache"
        request.add_header("If-None-Match", etag)
        with pytest.raises(urllib.error.HTTPError) as not_modified:
            urllib.request.urlopen(request, timeout=seconds(5))
        assert not_modified.value.code == 304
        not_modified.value.close()

        ws = client(program.ws_url + "/ws")  # the `websockets` client: an independent peer
        try:
            ws.send("hello")
            assert ws.recv(timeout=seconds(5)) == "hello"
            ws.send(b"\x00\xff")
            assert ws.recv(timeout=seconds(5)) == b"\x00\xff"
        finally:
            ws.close()
        assert program.stop() == 0  # SIGTERM: a graceful stop, exit status 0
