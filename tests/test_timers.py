"""Keepalive, handshake and close timeouts, and read backpressure (WEBSOCKET_MAX_QUEUE)."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import Any

import embedws

from .conftest import (
    EARLY,
    MS,
    RawClient,
    add_handler,
    client,
    echo_handlers,
    raw_frame,
    seconds,
    serving,
)

TEXT, CLOSE = 1, 8


def test_keepalive_pings_keep_a_live_client_and_measure_latency(kind: str) -> None:
    app = embedws.App(
        "keepalive", config={"WEBSOCKET_PING_INTERVAL": 0.05, "WEBSOCKET_PING_TIMEOUT": 1}
    )

    def handler(request: Any, ws: Any) -> None:
        for _ in ws:
            ws.send(str(ws.latency))

    async def ahandler(request: Any, ws: Any) -> None:
        async for _ in ws:
            await ws.send(str(ws.latency))

    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server, client(server.url + "/", ping_interval=None) as c:
        # The client answers the server's keepalive pings by itself; once one
        # came back, the server knows the latency.
        latency, deadline = 0.0, time.monotonic() + seconds(5)
        while latency == 0 and time.monotonic() < deadline:
            c.send("latency?")
            latency = float(c.recv(timeout=seconds(5)))
            if latency == 0:
                time.sleep(10 * MS)  # pacing the question, not synchronising
        assert 0 < latency < seconds(1)
        c.send("still there?")
        assert float(c.recv(timeout=seconds(5))) > 0


def test_a_client_that_never_answers_pings_is_closed_with_1011(kind: str) -> None:
    app = embedws.App(
        "keepalive-timeout",
        config={"WEBSOCKET_PING_INTERVAL": 0.05, "WEBSOCKET_PING_TIMEOUT": 0.1},
    )
    add_handler(app, "/", kind, *echo_handlers())
    with serving(app) as server:
        peer = RawClient(server.port)
        started = time.monotonic()
        assert peer.close_code(answer=False) == 1011  # a mute client: no pongs
        assert time.monotonic() - started < seconds(3)
        peer.close()


def test_a_peer_that_never_finishes_the_close_is_aborted_after_websocket_timeout(kind: str) -> None:
    app = embedws.App("close-timeout", config={"WEBSOCKET_TIMEOUT": 0.2})
    closed = threading.Event()

    def handler(request: Any, ws: Any) -> None:
        ws.close()
        closed.set()

    async def ahandler(request: Any, ws: Any) -> None:
        await ws.close()
        closed.set()

    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5))
        from .conftest import upgrade_request

        sock.sendall(upgrade_request("/"))
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):  # never answers the close frame
            data += chunk
        assert closed.wait(seconds(5))
        elapsed = time.monotonic() - started
        sock.close()
    assert b"\x88\x02\x03\xe8" in data  # the server's close frame, 1000
    assert 0.2 - EARLY <= elapsed < seconds(3)


def test_the_request_head_must_arrive_within_websocket_timeout() -> None:
    app = embedws.App("slow-head", config={"WEBSOCKET_TIMEOUT": 0.2})
    app.add_websocket_route(echo_handlers()[0], "/")
    with serving(app) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5))
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: web")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        elapsed = time.monotonic() - started
        sock.close()
    assert data.startswith(b"HTTP/1.1 408")
    assert 0.2 - EARLY <= elapsed < seconds(3)


def test_reading_pauses_when_max_queue_messages_wait(kind: str) -> None:
    app = embedws.App("backpressure", config={"WEBSOCKET_MAX_QUEUE": 4})
    release, entered = threading.Event(), threading.Event()
    received: list[Any] = []

    def handler(request: Any, ws: Any) -> None:
        entered.set()
        while not release.is_set():
            embedws.sync.sleep(seconds(0.01))
        received.extend(ws.recv(timeout=seconds(5)) for _ in range(count))
        ws.send("done")

    async def ahandler(request: Any, ws: Any) -> None:
        import asyncio

        entered.set()
        while not release.is_set():
            await asyncio.sleep(seconds(0.01))
        received.extend([await ws.recv(timeout=seconds(5)) for _ in range(count)])
        await ws.send("done")

    add_handler(app, "/", kind, handler, ahandler)
    count = 2000
    with serving(app) as server:
        peer = RawClient(server.port)
        assert entered.wait(seconds(5))
        peer.sock.setblocking(False)
        # 40 MB: more than the kernel's socket buffers can hold
        frames = [raw_frame(TEXT, b"%05d" % i + b"x" * 20000) for i in range(count)]
        data, sent = b"".join(frames), 0
        stalled = False
        while sent < len(data):
            # No progress for 0.5 s means the server stopped reading.
            _, writable, _ = select.select([], [peer.sock], [], 0.5)
            if not writable:
                stalled = True
                break
            try:
                sent += peer.sock.send(data[sent : sent + 65536])
            except BlockingIOError:
                continue
        assert stalled, "the server kept reading although the handler did not"
        release.set()
        peer.sock.setblocking(True)
        peer.sock.sendall(data[sent:])
        frames_in = peer.events(until_close=False, timeout=seconds(10))
        assert [bytes(f.data) for f in frames_in if f.opcode == TEXT] == [b"done"]
        peer.sock.sendall(raw_frame(CLOSE, struct.pack("!H", 1000)))
        peer.close()
    assert [m[:5] for m in received] == [f"{i:05d}" for i in range(count)]
