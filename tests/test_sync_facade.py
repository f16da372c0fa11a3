"""The synchronous facade: thread safety, other threads using a handler's websocket,
slow peers, logging that cannot block, many clients at shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import textwrap
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

import embedws
import embedws.switches
from embedws.errors import WebsocketClosed
from embedws.sync.bridge.inbox import wake_batch_for

from .conftest import (
    MS,
    RawClient,
    client,
    echo_handlers,
    seconds,
    serving,
    time_stop_under_clients,
)

SYNC_KINDS = ("thread", "greenlet")


@pytest.fixture(params=SYNC_KINDS)
def sync_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_eight_threads_sending_on_one_websocket_never_interleave(sync_kind: str) -> None:
    app = embedws.App("threads")
    ready = threading.Event()
    holder: dict[str, Any] = {}

    @app.websocket("/", mode=sync_kind)
    def handler(request: Any, ws: Any) -> None:
        holder["ws"] = ws
        ready.set()
        ws.wait_closed(30)

    def sender(ws: Any, index: int) -> None:
        for n in range(100):
            ws.send(json.dumps({"t": index, "n": n, "pad": "x" * 5000}))

    with serving(app) as server, client(server.url + "/", max_size=None) as c:
        assert ready.wait(seconds(5))
        threads = [threading.Thread(target=sender, args=(holder["ws"], i)) for i in range(8)]
        for thread in threads:
            thread.start()
        received = [json.loads(c.recv(timeout=seconds(10))) for _ in range(800)]
        for thread in threads:
            thread.join(seconds(10))
    assert all(len(m["pad"]) == 5000 for m in received)
    for index in range(8):  # each thread's messages arrive whole and in order
        assert [m["n"] for m in received if m["t"] == index] == list(range(100))


def test_a_gui_thread_sends_while_the_handler_waits_in_recv(sync_kind: str) -> None:
    app = embedws.App("gui")
    holder: dict[str, Any] = {}
    ready, timed_out = threading.Event(), threading.Event()
    timeouts: list[float] = []

    @app.websocket("/", mode=sync_kind)
    def handler(request: Any, ws: Any) -> None:
        holder["ws"] = ws
        ready.set()
        while True:
            started = time.monotonic()
            try:
                message = ws.recv(timeout=50 * MS)
            except TimeoutError:
                timeouts.append(time.monotonic() - started)
                timed_out.set()
                continue
            except WebsocketClosed:
                return
            ws.send(f"handler got {message}")

    with serving(app) as server, client(server.url + "/") as c:
        assert ready.wait(seconds(5))
        assert timed_out.wait(seconds(5))  # the handler loops on recv(timeout)
        gui = threading.Thread(target=lambda: [holder["ws"].send(f"tick {i}") for i in range(5)])
        gui.start()
        gui.join(seconds(5))
        assert [c.recv(timeout=seconds(5)) for _ in range(5)] == [f"tick {i}" for i in range(5)]
        c.send("hello")
        assert c.recv(timeout=seconds(5)) == "handler got hello"
        waiter = holder["ws"].ping()  # from this (non-handler) thread too
        assert waiter.wait(seconds(5)) is True
    assert all(t >= 50 * MS * 0.9 for t in timeouts)


def test_another_thread_closes_a_websocket_whose_handler_waits_in_recv(sync_kind: str) -> None:
    app = embedws.App("close-from-thread")
    holder: dict[str, Any] = {}
    ready, ended = threading.Event(), threading.Event()
    outcome: list[Any] = []

    @app.websocket("/", mode=sync_kind)
    def handler(request: Any, ws: Any) -> None:
        holder["ws"] = ws
        ready.set()
        try:
            ws.recv()
        except WebsocketClosed as exc:
            outcome.append((exc.code, exc.sent_code))
        ended.set()

    with serving(app) as server, client(server.url + "/") as c:
        assert ready.wait(seconds(5))
        holder["ws"].close(4002, "from the GUI")  # blocks until closed
        assert holder["ws"].closed
        with pytest.raises(ConnectionClosed) as caught:
            c.recv(timeout=seconds(5))
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 4002
        assert ended.wait(seconds(5))
    assert outcome == [(4002, 4002)]


def test_a_slow_reader_blocks_the_sender_at_most_the_write_timeout(sync_kind: str) -> None:
    app = embedws.App("slow", config={"WEBSOCKET_WRITE_TIMEOUT": 0.5})
    outcome: list[Any] = []
    done = threading.Event()

    @app.websocket("/", mode=sync_kind)
    def flood(request: Any, ws: Any) -> None:
        started = time.monotonic()
        try:
            while True:
                ws.send(b"x" * 65536)
        except WebsocketClosed as exc:
            outcome.append((exc.sent_code, time.monotonic() - started))
        done.set()

    with serving(app) as server:
        peer = RawClient(server.port)
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert done.wait(seconds(10))  # the peer never reads
        peer.close()
    [(sent_code, elapsed)] = outcome
    assert sent_code == 1011
    assert elapsed < seconds(5)


def test_logging_that_blocks_does_not_freeze_the_server(logs: Any) -> None:
    class StuckHandler(logging.Handler):
        """Like a StreamHandler on a pipe that nobody reads."""

        def __init__(self) -> None:
            super().__init__()
            self.unblock = threading.Event()
            self.entered = threading.Event()

        def handle(self, record: logging.LogRecord) -> bool:
            # Only embedws's records get stuck: the test's own threads log
            # too (asyncio, the websockets client) and must not block.
            if record.name.startswith("embedws"):
                self.entered.set()
                self.unblock.wait(seconds(30))
            return True

        def emit(self, record: logging.LogRecord) -> None:
            raise AssertionError("handle() does not emit")

    stuck = StuckHandler()
    logging.getLogger().addHandler(stuck)
    app = embedws.App("stuck-logging")
    echo, _ = echo_handlers()
    app.add_websocket_route(echo, "/")

    @app.websocket("/crash")
    async def crash(request: Any, ws: Any) -> None:
        raise RuntimeError("logged with a traceback, on the event loop thread")

    try:
        with serving(app) as server:
            for _ in range(3):
                with client(server.url + "/crash") as c:
                    with pytest.raises(ConnectionClosed):
                        c.recv(timeout=seconds(5))
            assert stuck.entered.wait(seconds(5))  # the log output is stuck now
            with client(server.url + "/") as c:
                for i in range(20):
                    c.send(f"m{i}")
                    assert c.recv(timeout=seconds(5)) == f"m{i}"
            stuck.unblock.set()
    finally:
        stuck.unblock.set()
        logging.getLogger().removeHandler(stuck)


def test_a_peer_reset_is_logged_at_debug_without_a_traceback(logs: Any) -> None:
    app = embedws.App("reset-log")
    app.add_websocket_route(echo_handlers()[0], "/")
    with serving(app) as server:
        peer = RawClient(server.port)
        peer.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        peer.close()
        logs.wait_for("lost", level=logging.DEBUG)
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]


def test_stop_with_500_clients_is_quick_and_every_client_sees_1001() -> None:
    app = embedws.App("many", config={"WEBSOCKET_PING_INTERVAL": None})
    echo, aecho = echo_handlers()
    app.add_websocket_route(echo, "/sync")
    app.add_websocket_route(aecho, "/async")
    app.add_websocket_route(echo, "/greenlet", mode="greenlet")
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        FACTOR = float(os.environ.get("EMBEDWS_TESTS_TIMEOUT_FACTOR", "1"))  # as the suite's MS

        async def one(url, opened, codes):
            async with connect(url, ping_interval=None, open_timeout=20 * FACTOR) as ws:
                await ws.send("hi")
                await ws.recv()
                opened.append(1)
                if len(opened) == int(sys.argv[2]):
                    print("ready", flush=True)
                try:
                    await ws.recv()
                except ConnectionClosed as exc:
                    codes.append(exc.rcvd.code if exc.rcvd else 1006)

        async def main():
            base, count = sys.argv[1], int(sys.argv[2])
            paths = ["/sync", "/async", "/greenlet"]
            opened, codes = [], []
            await asyncio.gather(*(one(base + paths[i % 3], opened, codes) for i in range(count)))
            print(sorted(set(codes)), len(codes), flush=True)

        asyncio.run(main())
        """
    )
    server = app.start(port=0)
    elapsed, out, err = time_stop_under_clients(
        server, script, 500, ready="ready", timeout=seconds(20)
    )
    assert out.strip() == "[1001] 500", err
    assert elapsed < seconds(2), elapsed


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
@pytest.mark.parametrize("batch", [True, False])
def test_handler_threads_run_with_sched_batch_unless_configured_off(batch: bool) -> None:
    app = embedws.App("sched", config={"SYNC_HANDLER_SCHED_BATCH": batch})
    host_policy = os.sched_getscheduler(0)

    @app.websocket("/")
    def handler(request: Any, ws: Any) -> None:
        started: list[int] = []
        thread = threading.Thread(target=lambda: started.append(os.sched_getscheduler(0)))
        thread.start()
        thread.join()
        ws.send(f"{os.sched_getscheduler(0)} {started[0]}")

    with serving(app) as server, client(server.url + "/") as c:
        policy, child = map(int, c.recv(timeout=seconds(5)).split())
    # The switch (EMBEDWS_SCHED_BATCH, or EMBEDWS_FAST_PATHS=0) turns it off for all.
    expected = os.SCHED_BATCH if batch and embedws.switches.SCHED_BATCH else host_policy
    assert (policy, child) == (expected, expected)  # threads a handler starts inherit it
    assert os.sched_getscheduler(0) == host_policy  # the host's threads keep theirs


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_a_busy_loop_lets_the_handler_thread_it_woke_start_in_the_same_pass() -> None:
    """A server on one CPU whose loop never waits for I/O (there is always
    something ready, as on a busy server): a woken ``SCHED_BATCH`` handler thread
    does not preempt the loop, and used to run only when the scheduler's tick
    took the CPU from the loop, mid-pass and holding the GIL, so that each
    start waited for the GIL, for up to 150 ms. The pass that woke it now ends
    by yielding the CPU to it. Counted in the loop's passes, not in seconds: a
    loaded machine slows both alike."""
    app = embedws.App("busy")
    passes = [0]
    spinning = threading.Event()
    batching: list[bool] = []

    def spin() -> None:  # a pass that never waits: a callback is always ready
        passes[0] += 1
        if spinning.is_set():
            asyncio.get_running_loop().call_soon(spin)

    @app.on_request
    async def note_the_pass(request: Any) -> None:
        request.ctx.pass_started = passes[0]
        if not batching:
            loop = asyncio.get_running_loop()
            batching.append(wake_batch_for(loop) is not None)
            spinning.set()
            loop.call_soon(spin)

    @app.websocket("/")
    def handler(request: Any, ws: Any) -> None:
        ws.send(str(passes[0] - request.ctx.pass_started))

    servers: list[embedws.sync.Server] = []

    def start_on_one_cpu() -> None:  # the loop thread and the handler threads inherit it
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        servers.append(app.start(port=0))

    starter = threading.Thread(target=start_on_one_cpu)
    starter.start()
    starter.join(seconds(10))
    (server,) = servers
    try:
        waits = []
        for _ in range(21):
            with client(server.url + "/") as c:
                waits.append(int(c.recv(timeout=seconds(5))))
    finally:
        spinning.clear()
        server.stop(timeout=seconds(5))
    if not (batching[0] and embedws.switches.SCHED_BATCH):
        pytest.skip("not our batching loop with SCHED_BATCH handler threads (a fast path is off)")
    waits.sort()
    # The 19th of 21: all 0 with the yield; without it, 2,700 to 24,000 (up to 150 ms).
    assert waits[-3] <= 100, waits


def test_no_frame_splits_a_message_the_socket_took_only_in_part(sync_kind: str) -> None:
    """A handler's send the socket takes in part is finished before any other frame:
    broadcasts from other threads, and the loop's pongs, come after its last byte.

    Each message is 512 KiB in 512 fragments: the handler thread writes fragment
    after fragment until the socket is full, a window in which the other threads'
    broadcasts reach the loop. (Not larger: a recipient 1 MiB behind when a
    broadcast comes is dropped as a slow reader.)"""
    from websockets.frames import Opcode

    app = embedws.App("split")
    ready = threading.Event()
    count, fragments = 12, 512

    @app.websocket("/", mode=sync_kind)
    def handler(request: Any, ws: Any) -> None:
        app.room("r").add(ws)
        ready.set()
        for i in range(count):
            ws.send(iter([f"{i:06d}"] + ["x" * 1024] * fragments))  # one fragmented message
        ws.wait_closed(30)

    def noise() -> None:
        for j in range(400):
            app.room("r").broadcast(f"b{j}")

    texts: list[str] = []
    parts: list[str] = []
    with serving(app) as server:
        raw = RawClient(server.port, "/")
        assert ready.wait(seconds(5))
        threads = [threading.Thread(target=noise) for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + seconds(20)
        while len(texts) < count + 800 and time.monotonic() < deadline:
            raw.send_frame(Opcode.PING.value, b"p")  # answered by the loop
            for frame in raw.events(until_close=False, timeout=seconds(5)):
                assert frame.opcode in (Opcode.TEXT, Opcode.CONT, Opcode.PONG), frame
                if frame.opcode is not Opcode.PONG:
                    parts.append(frame.data.decode())
                    if frame.fin:
                        texts.append("".join(parts))
                        parts.clear()
        for thread in threads:
            thread.join(seconds(5))
        raw.close()
    big = [text for text in texts if not text.startswith("b")]
    assert [text[:6] for text in big] == [f"{i:06d}" for i in range(count)]
    assert all(len(text) == 6 + 1024 * fragments for text in big)
    assert sorted(text for text in texts if text.startswith("b")) == sorted(
        f"b{j}" for j in range(400) for _ in range(2)
    )


def test_a_handler_writing_as_its_connection_goes_never_reaches_the_next_one() -> None:
    """Handler threads write to the socket themselves; a descriptor closed under
    them and reused by a new connection must never get their messages."""
    from websockets.frames import Opcode

    app = embedws.App("recycle")

    @app.websocket("/<name>")
    def flood(request: Any, ws: Any, name: str) -> None:
        try:
            while True:
                ws.send(name)
        except WebsocketClosed:
            pass

    with serving(app) as server:
        for round_ in range(8):
            clients = [RawClient(server.port, f"/c{round_}-{i}") for i in range(8)]
            for i, raw in enumerate(clients):
                texts: list[str] = []
                while len(texts) < 20:
                    frames = raw.events(until_close=False, timeout=seconds(5))
                    assert frames, "no message came"
                    texts += [f.data.decode() for f in frames if f.opcode is Opcode.TEXT]
                assert set(texts) == {f"c{round_}-{i}"}
            for i, raw in enumerate(clients):
                if i % 2:  # an abortive close: the server sees a reset
                    linger = struct.pack("ii", 1, 0)
                    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                raw.close()
