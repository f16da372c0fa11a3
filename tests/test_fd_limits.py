"""Running out of file descriptors: one warning, idle HTTP connections make room."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

import embedws
from embedws.aio import acceptor
from embedws.response import HTTPResponse, text

from .conftest import ECHO_PROGRAM, MS, client, seconds, serving, status_of

ROOT = Path(__file__).resolve().parent.parent

# Every record the program logs starts with this, so the test can count them.
RECORD = "embedws-test-record"

# The echo program, with a descriptor limit of 128 and its logging on stderr.
LIMITED_ECHO_PROGRAM = (
    textwrap.dedent(
        f"""
        import logging
        import resource
        import sys

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="{RECORD} %(levelname)s %(message)s"
        )
        """
    )
    + ECHO_PROGRAM
    + textwrap.dedent(
        """
        server = app.start(port=0, ssl={"cert": sys.argv[1]} if len(sys.argv) > 1 else None)
        print(server.port, flush=True)
        sys.stdin.readline()
        server.stop()
        """
    )
)


@pytest.mark.parametrize("accept", ["watched", "loop"])
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_client_is_served_while_idle_sockets_hold_every_descriptor(
    scheme: str, accept: str, tmp_path: Path
) -> None:
    """Idle connections are closed to make room; one warning, not one per attempt.

    Over TLS, the idle sockets never start the handshake: those are closed too.
    Both ways of accepting: a watched listening socket, and the portable
    accept loop (``EMBEDWS_FAST_ACCEPT=0``).
    """
    args: list[str] = []
    options: dict[str, Any] = {}
    if scheme == "wss":
        ca = trustme.CA()
        pem = tmp_path / "cert.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
        options["ssl"] = ssl.create_default_context()
        ca.configure_trust(options["ssl"])
        args.append(str(pem))
    process = subprocess.Popen(
        [sys.executable, "-c", LIMITED_ECHO_PROGRAM, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "EMBEDWS_FAST_ACCEPT": "1" if accept == "watched" else "0"},
    )
    idle: list[socket.socket] = []
    try:
        assert process.stdin is not None and process.stdout is not None
        port = int(process.stdout.readline())
        # More silent connections than the server has descriptors: it runs out
        # and the last ones wait in the listening socket's queue.
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=seconds(5)))
        started = time.monotonic()
        with client(f"{scheme}://127.0.0.1:{port}/", open_timeout=2000 * MS, **options) as ws:
            ws.send("served")
            assert ws.recv(timeout=2000 * MS) == "served"
        assert time.monotonic() - started < 2000 * MS
        process.stdin.write("\n")
        process.stdin.flush()
        _out, err = process.communicate(timeout=seconds(20))
    finally:
        for sock in idle:
            sock.close()
        process.kill()
        process.communicate()
    records = [line for line in err.splitlines() if line.startswith(RECORD)]
    assert len(records) < 10, err[:5000]
    warnings = [r for r in records if r.startswith(f"{RECORD} WARNING")]
    assert len(warnings) == 1, records
    assert "out of file descriptors" in warnings[0]
    assert "RLIMIT_NOFILE" in warnings[0]
    assert process.returncode == 0, err[:5000]


def close_idle_http(server: embedws.sync.Server, count: int) -> int:
    """``close_idle_http(count)`` of the server, called on its event loop."""

    async def call() -> int:
        return server.async_server.close_idle_http(count)

    return asyncio.run_coroutine_threadsafe(call(), server.async_server.loop).result(seconds(5))


def wait_for_connections(server: embedws.sync.Server, count: int) -> None:
    """Wait until the server has accepted ``count`` connections (a client's
    ``connect()`` returns before the server's ``accept()``)."""

    async def accepted() -> None:
        while server.async_server.connection_count() < count:
            await asyncio.sleep(0)

    asyncio.run_coroutine_threadsafe(accepted(), server.async_server.loop).result(seconds(5))


def at_eof(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (waits for the end of the stream, at most 5 s)."""
    sock.settimeout(seconds(5))
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def still_open(sock: socket.socket) -> bool:
    """Whether ``sock`` has neither data nor the end of the stream waiting."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def test_closing_idle_http_connections_takes_the_longest_idle_first_never_a_busy_one() -> None:
    """What running out of descriptors closes: idle HTTP connections, one at a time here.

    Never a request being answered or being read, never a websocket.
    """
    app = embedws.App("fd")
    entered, release = threading.Event(), threading.Event()

    @app.get("/")
    def index(request: Any) -> HTTPResponse:
        return text("hello")

    @app.get("/slow")
    def slow(request: Any) -> HTTPResponse:
        entered.set()
        release.wait(seconds(5))
        return text("slow")

    @app.websocket("/ws")
    def echo(request: Any, ws: Any) -> None:
        for message in ws:
            ws.send(message)

    # No keep-alive timeout within the test: one that fired would close
    # keep_alive on its own (it did once, on a loaded CI machine), and the
    # second call would close newest instead.
    with serving(app, KEEP_ALIVE_TIMEOUT=seconds(60)) as server:
        address = ("127.0.0.1", server.port)
        busy = socket.create_connection(address, timeout=seconds(5))
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert entered.wait(seconds(5))
        reading = socket.create_connection(address, timeout=seconds(5))
        reading.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head is not over
        ws = client(server.url + "/ws")
        silent = socket.create_connection(address, timeout=seconds(5))  # idle since it connected
        keep_alive = socket.create_connection(address, timeout=seconds(5))
        keep_alive.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert keep_alive.recv(4096).endswith(b"hello")  # idle since its answer
        newest = socket.create_connection(address, timeout=seconds(5))
        wait_for_connections(server, 6)  # busy, reading, ws, silent, keep_alive, newest
        try:
            assert close_idle_http(server, 1) == 1
            assert at_eof(silent)
            assert close_idle_http(server, 1) == 1
            assert at_eof(keep_alive)
            assert still_open(newest)
            assert close_idle_http(server, 1) == 1
            assert at_eof(newest)
            assert close_idle_http(server, 8) == 0
            # What was not idle is served to the end.
            release.set()
            assert status_of(busy.recv(4096)) == 200
            reading.sendall(b"\r\n")
            assert reading.recv(4096).endswith(b"hello")
            ws.send("still here")
            assert ws.recv(timeout=seconds(5)) == "still here"
        finally:
            release.set()
            ws.close()
            for sock in (busy, reading, silent, keep_alive, newest):
                sock.close()


def test_the_portable_accept_loop_serves_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accept loop on ``sock_accept`` (the proactor loop's way; CI's fast-paths-off run
    takes it for the whole suite) serves websockets and HTTP, and ends with the server."""
    monkeypatch.setattr(acceptor, "FAST_ACCEPT", False)
    app = embedws.App("portable-accept")

    @app.get("/")
    def index(request: Any) -> HTTPResponse:
        return text("hello")

    @app.websocket("/ws")
    def echo(request: Any, ws: Any) -> None:
        for message in ws:
            ws.send(message)

    with serving(app) as server:
        for n in range(3):
            with client(server.url + "/ws") as ws:
                ws.send(f"hello {n}")
                assert ws.recv(timeout=seconds(5)) == f"hello {n}"
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert at_eof_after(sock).endswith(b"hello")
    # Stopped: nothing listens any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5)).close()


def at_eof_after(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the server closes it."""
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data
