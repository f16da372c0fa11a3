"""Hostile and careless peers, overload, churn and shutdown under load.

The long ones are marked ``slow`` and run in their own step of ``.ci/run``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import psutil
import pytest

import embedws

from .conftest import (
    MS,
    RawClient,
    client,
    echo_handlers,
    raw_frame,
    raw_http,
    seconds,
    serving,
    status_of,
    time_stop_under_clients,
    upgrade_request,
)


@pytest.fixture
def echo_app() -> embedws.App:
    app = embedws.App("hardening")
    echo, aecho = echo_handlers()
    app.add_websocket_route(echo, "/thread")
    app.add_websocket_route(echo, "/greenlet", mode="greenlet", name="greenlet_echo")
    app.add_websocket_route(aecho, "/async")
    return app


# malformed requests at the default limits --------------------------------------------


def test_a_one_megabyte_request_line_and_thousands_of_headers(echo_app: embedws.App) -> None:
    with serving(echo_app) as server:
        huge = b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        assert status_of(raw_http(server.port, huge)) in (414, 431)
        many = b"".join(b"X-%d: v\r\n" % i for i in range(3000))
        request = b"GET /thread HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n"
        assert status_of(raw_http(server.port, request)) == 431
        with client(server.url + "/async") as c:  # still serving
            c.send("ok")
            assert c.recv(timeout=seconds(5)) == "ok"


def test_an_upgrade_body_over_the_limit_and_odd_methods(echo_app: embedws.App) -> None:
    with serving(echo_app, REQUEST_MAX_SIZE=1000) as server:
        request = (
            upgrade_request("/thread").replace(b"\r\n\r\n", b"\r\nContent-Length: 5000\r\n\r\n")
            + b"x" * 5000
        )
        assert status_of(raw_http(server.port, request)) == 413
        for method in (b"PUT", b"DELETE", b"OPTIONS"):
            answer = raw_http(server.port, upgrade_request("/thread").replace(b"GET", method, 1))
            assert status_of(answer) == 405


# slowloris ------------------------------------------------------------------------------


@pytest.mark.slow
def test_500_slowloris_clients_do_not_stop_a_normal_client(echo_app: embedws.App) -> None:
    with serving(echo_app, WEBSOCKET_TIMEOUT=2, REQUEST_TIMEOUT=2) as server:
        request = upgrade_request("/thread")
        slow = []
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=seconds(10))
            sock.sendall(request[:1])
            slow.append(sock)
        started = time.monotonic()
        for path in ("/thread", "/greenlet", "/async"):  # normal clients get in meanwhile
            with client(server.url + path) as c:
                c.send("through")
                assert c.recv(timeout=seconds(5)) == "through"
        for sock in slow:  # one more byte each, as slowloris does
            try:
                sock.sendall(request[1:2])
            except OSError:
                pass
        dropped = 0
        for sock in slow:
            data = sock.recv(4096)  # the server answers 408 and closes
            if data.startswith(b"HTTP/1.1 408") or data == b"":
                dropped += 1
            sock.close()
        assert dropped == 500
        assert time.monotonic() - started < seconds(10)


# slow readers ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["thread", "greenlet", "async"])
def test_a_slow_reader_costs_bounded_memory_and_is_dropped(kind: str) -> None:
    app = embedws.App("slow-reader", config={"WEBSOCKET_WRITE_TIMEOUT": 1})
    outcome: list[Any] = []
    done = threading.Event()
    chunk = b"x" * 65536
    peers_count = 20

    def finished(code: int | None) -> None:
        outcome.append(code)
        if len(outcome) == peers_count:
            done.set()

    def flood(request: Any, ws: Any) -> None:
        try:
            while True:
                ws.send(chunk)
        except embedws.WebsocketClosed as exc:
            finished(exc.sent_code)

    async def aflood(request: Any, ws: Any) -> None:
        try:
            while True:
                await ws.send(chunk)
        except embedws.WebsocketClosed as exc:
            finished(exc.sent_code)

    if kind == "async":
        app.add_websocket_route(aflood, "/")
    else:
        app.add_websocket_route(flood, "/", mode=kind)
    process = psutil.Process()
    with serving(app) as server:
        before = process.memory_info().rss
        peers = [RawClient(server.port, rcvbuf=4096) for _ in range(peers_count)]
        assert done.wait(seconds(10))  # every sender was released by its write timeout
        grown = process.memory_info().rss - before
        for peer in peers:
            peer.close()
    assert outcome == [1011] * peers_count
    # 20 stalled peers: each may hold a write buffer and a message in flight
    assert grown < 40 * 2**20, grown


@pytest.mark.parametrize("kind", ["thread", "greenlet", "async"])
def test_a_ping_flood_that_never_reads_costs_bounded_memory(kind: str) -> None:
    app = embedws.App("ping-flood", config={"WEBSOCKET_WRITE_TIMEOUT": 3})
    echo, aecho = echo_handlers()
    if kind == "async":
        app.add_websocket_route(aecho, "/")
    else:
        app.add_websocket_route(echo, "/", mode=kind)
    pings = raw_frame(0x9, b"p" * 125) * 8192  # 1 MiB of pings, each owed a pong
    process = psutil.Process()
    with serving(app) as server:
        before = process.memory_info().rss
        flooder = RawClient(server.port, rcvbuf=4096)  # reads nothing back
        flooder.sock.settimeout(500 * MS)
        sent = grown = 0
        try:
            while sent < 200 * 2**20:
                flooder.sock.sendall(pings)
                sent += len(pings)
                grown = max(grown, process.memory_info().rss - before)
            raise AssertionError("the server read 200 MiB of pings it could not answer")
        except TimeoutError:
            pass  # the server stopped reading from a peer that does not read its pongs
        # The write timeout then drops it: the socket is reset or closed.
        flooder.sock.settimeout(seconds(10))
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while True:
                flooder.sock.sendall(pings)
        flooder.close()
    assert grown < 20 * 2**20, grown


def test_pipelined_requests_never_read_cost_bounded_memory(tmp_path: Any) -> None:
    """200 pipelined GETs of a 1 MiB file, answers never read: one answer in memory at a time."""
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2**20)
    app = embedws.App("pipeline", config={"WEBSOCKET_WRITE_TIMEOUT": 1})

    @app.route("/big")
    def download(request: Any) -> Any:
        return embedws.response.file(big)

    request = b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    process = psutil.Process()
    with serving(app) as server:
        before = process.memory_info().rss
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request * 200)  # 7.4 KB of requests: the kernel takes them all
        grown, started = 0, time.monotonic()
        # Until the write timeout has dropped it (the server's side of the socket is gone).
        while server.async_server.connection_count() and time.monotonic() - started < seconds(10):
            grown = max(grown, process.memory_info().rss - before)
            time.sleep(seconds(0.01))  # sampling memory, not synchronising
        dropped_after = time.monotonic() - started
        sock.close()
        with socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5)) as other:
            other.sendall(request)  # the server serves others as before
            assert other.recv(12) == b"HTTP/1.1 200"
    assert dropped_after < 1 + seconds(3), dropped_after
    assert grown < 20 * 2**20, grown


# overload -------------------------------------------------------------------------------


def test_a_stuck_sync_handler_neither_blocks_others_nor_stop(logs: Any) -> None:
    app = embedws.App("stuck", config={"GRACEFUL_SHUTDOWN_TIMEOUT": 0.5})
    spinning, stop_spinning = threading.Event(), threading.Event()

    @app.websocket("/spin")
    def spin(request: Any, ws: Any) -> None:
        spinning.set()
        while not stop_spinning.is_set():  # a CPU loop that never looks at ws
            pass

    echo, _ = echo_handlers()
    app.add_websocket_route(echo, "/echo")
    server = app.start(port=0)
    try:
        stuck = client(server.url + "/spin")
        assert spinning.wait(seconds(5))
        with client(server.url + "/echo") as c:
            for i in range(20):
                c.send(str(i))
                assert c.recv(timeout=seconds(5)) == str(i)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < seconds(5)
        record = logs.wait_for("abandoning handler thread")
        assert "spin" in record.getMessage()
    finally:
        stop_spinning.set()
        stuck.close()
        server.stop()


# churn and leaks ------------------------------------------------------------------------

CHURN_CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from websockets.asyncio.client import connect

    async def main():
        url, cycles, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        async def worker(n):
            for i in range(n):
                async with connect(url, ping_interval=None, compression=None) as ws:
                    await ws.send("x")
                    assert await ws.recv() == "x"
        await asyncio.gather(*(worker(cycles // width) for _ in range(width)))
        print("done", flush=True)

    asyncio.run(main())
    """
)


def run_churn(url: str, cycles: int, width: int = 20) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHURN_CLIENT, url, str(cycles), str(width)],
        capture_output=True,
        text=True,
        timeout=seconds(120),
        check=False,  # the assertion below shows stderr
    )
    assert result.stdout.strip() == "done", result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/thread", "/greenlet", "/async"])
def test_10000_connect_echo_disconnect_cycles_do_not_leak(echo_app: embedws.App, path: str) -> None:
    process = psutil.Process()
    threads, fds = threading.active_count(), process.num_fds()
    with serving(echo_app, WEBSOCKET_PING_INTERVAL=None) as server:
        run_churn(server.url + path, 1000)  # warm-up: pools, caches, allocator arenas
        rss = process.memory_info().rss
        run_churn(server.url + path, 10_000)
        growth = process.memory_info().rss - rss
        assert len(echo_app.connections) == 0
    # Idle pool threads may linger while the server runs; nothing outlives it.
    assert threading.active_count() == threads
    assert process.num_fds() <= fds
    assert growth < 10 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


@pytest.mark.slow
def test_100_start_stop_cycles_do_not_leak(echo_app: embedws.App) -> None:
    process = psutil.Process()
    with serving(echo_app) as server, client(server.url + "/thread") as c:
        c.send("warm")
        c.recv(timeout=seconds(5))
    threads, fds, rss = threading.active_count(), process.num_fds(), process.memory_info().rss
    for _ in range(100):
        with echo_app.serve(port=0) as server:
            for path in ("/thread", "/greenlet", "/async"):
                with client(server.url + path) as c:
                    c.send("x")
                    assert c.recv(timeout=seconds(5)) == "x"
    assert threading.active_count() == threads
    assert process.num_fds() <= fds
    assert process.memory_info().rss - rss < 10 * 2**20


# shutdown under load ---------------------------------------------------------------------

LOAD_CLIENT = textwrap.dedent(
    """
    import asyncio, os, sys
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    FACTOR = float(os.environ.get("EMBEDWS_TESTS_TIMEOUT_FACTOR", "1"))  # as the suite's MS

    async def main():
        base, count = sys.argv[1], int(sys.argv[2])
        paths = ["/thread", "/greenlet", "/async"]
        opened, codes = [], []
        async def one(i):
            async with connect(base + paths[i % 3], ping_interval=None, open_timeout=30 * FACTOR,
                               compression=None) as ws:
                opened.append(i)
                if len(opened) == count:
                    print("busy", flush=True)
                try:
                    while True:  # mid-echo when the server stops
                        await ws.send("ping")
                        await ws.recv()
                except ConnectionClosed as exc:
                    codes.append(exc.rcvd.code if exc.rcvd else 1006)
        sem = asyncio.Semaphore(100)
        async def limited(i):
            async with sem:
                pass
            await one(i)
        await asyncio.gather(*(limited(i) for i in range(count)))
        print(sorted(set(codes)), len(codes), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_stop_while_1000_clients_are_mid_echo(echo_app: embedws.App) -> None:
    server = echo_app.start(
        port=0, GRACEFUL_SHUTDOWN_TIMEOUT=seconds(5), WEBSOCKET_PING_INTERVAL=None
    )
    elapsed, out, err = time_stop_under_clients(
        server, LOAD_CLIENT, 1000, ready="busy", timeout=seconds(30)
    )
    assert elapsed < seconds(5), elapsed
    assert out.strip() == "[1001] 1000", err
    assert not [t for t in threading.enumerate() if t.name.startswith("embedws-handler")]
