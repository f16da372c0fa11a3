"""Starting and stopping: graceful shutdown, restarts, listeners, run(), aio.serve()."""

from __future__ import annotations

import asyncio
import gc
import http.client
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed

import embedws
from embedws.response import HTTPResponse, text

from .conftest import ECHO_PROGRAM, MS, add_handler, client, echo_handlers, seconds, serving

ROOT = Path(__file__).resolve().parent.parent


def test_stop_sends_1001_to_every_open_websocket(kind: str) -> None:
    app = embedws.App("stop")
    add_handler(app, "/", kind, *echo_handlers())
    server = app.start(port=0)
    clients = [client(server.url + "/") for _ in range(3)]
    try:
        server.stop()
        for c in clients:
            with pytest.raises(ConnectionClosed) as caught:
                c.recv(timeout=seconds(5))
            assert caught.value.rcvd is not None
            assert caught.value.rcvd.code == 1001
    finally:
        for c in clients:
            c.close()


def test_the_same_app_restarts_and_two_apps_run_at_once() -> None:
    first, second = embedws.App("one"), embedws.App("two")
    echo, _ = echo_handlers()
    first.add_websocket_route(echo, "/")
    second.add_websocket_route(echo, "/")
    for _ in range(2):
        with first.serve(port=0) as a, second.serve(port=0) as b:
            assert a.port != b.port
            for url in (a.url, b.url):
                with client(url + "/") as c:
                    c.send("ping")
                    assert c.recv(timeout=seconds(5)) == "ping"


def test_start_stop_cycles_leave_no_threads_or_file_descriptors() -> None:
    app = embedws.App("cycles")
    echo, aecho = echo_handlers()
    app.add_websocket_route(echo, "/sync")
    app.add_websocket_route(aecho, "/async")

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with app.serve(port=0) as server, client(server.url + "/sync") as c:  # warm-up
        c.send("x")
        c.recv(timeout=seconds(5))
    threads_before = {t.ident for t in threading.enumerate()}
    fds_before = fds()
    for _ in range(50):
        with app.serve(port=0) as server:
            with client(server.url + "/sync") as c:
                c.send("x")
                assert c.recv(timeout=seconds(5)) == "x"
            with client(server.url + "/async") as c:
                c.send("y")
                assert c.recv(timeout=seconds(5)) == "y"
    leftover = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    assert leftover == []
    assert fds() <= fds_before


def test_stop_from_inside_a_handler(kind: str) -> None:
    app = embedws.App("self-stop")
    holder: dict[str, Any] = {}

    def handler(request: Any, ws: Any) -> None:
        ws.recv(timeout=seconds(5))
        holder["server"].stop()  # returns at once: the shutdown goes on
        ws.recv(timeout=seconds(5))  # woken by the 1001 close

    async def ahandler(request: Any, ws: Any) -> None:
        await ws.recv(timeout=seconds(5))
        holder["server"].stop()
        await ws.recv(timeout=seconds(5))

    add_handler(app, "/", kind, handler, ahandler)
    server = holder["server"] = app.start(port=0)
    with client(server.url + "/") as c:
        c.send("stop please")
        with pytest.raises(ConnectionClosed) as caught:
            c.recv(timeout=seconds(5))
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1001
    assert server.wait(timeout=seconds(10))


def test_stop_from_a_listener() -> None:
    app = embedws.App("listener-stop")
    holder: dict[str, Any] = {}

    @app.after_server_start
    def started(a: Any) -> None:
        a.stop()  # from the loop thread, during start: schedules the stop

    server = holder["server"] = app.start(port=0)
    assert server.wait(timeout=seconds(10))
    server.stop()


def test_blocking_calls_on_the_loop_thread_raise_instead_of_hanging() -> None:
    app = embedws.App("guard")
    results: list[str] = []
    done = threading.Event()

    stored = threading.Event()

    @app.websocket("/sync")
    def sync_handler(request: Any, ws: Any) -> None:
        app.ctx.sync_ws = ws
        stored.set()
        ws.recv(timeout=seconds(5))

    @app.websocket("/async")
    async def async_handler(request: Any, ws: Any) -> None:
        sync_ws = app.ctx.sync_ws
        for call in (lambda: sync_ws.recv(timeout=seconds(1)), lambda: app.start(port=0)):
            try:
                call()
            except RuntimeError as exc:
                results.append(str(exc))
        done.set()

    with serving(app) as server, client(server.url + "/sync") as holder:
        assert stored.wait(seconds(5))  # the handler thread runs after the handshake
        with client(server.url + "/async"):
            assert done.wait(seconds(5))
        holder.send("release")
    assert len(results) == 2
    assert all("event loop thread" in message for message in results)


def test_run_from_another_thread_and_stop() -> None:
    app = embedws.App("run-thread")
    started = threading.Event()
    app.after_server_start(lambda a: started.set())
    runner = threading.Thread(target=app.run, kwargs={"port": 0})
    runner.start()
    assert started.wait(seconds(10))
    app.stop()
    runner.join(seconds(10))
    assert not runner.is_alive()


def echo_then_going_away(url: str, end: Callable[[], object]) -> None:
    """Echo once on ``url``, call ``end``, and expect the server's close to be 1001."""
    with client(url) as c:
        c.send("hi")
        assert c.recv(timeout=seconds(5)) == "hi"
        end()
        with pytest.raises(ConnectionClosed) as caught:
            c.recv(timeout=seconds(10))
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1001


# A test runner started in the background (``pytest &``, a CI job) hands its
# children SIGINT ignored, and app.run() leaves an ignored signal ignored, as
# Python does: the programs that test Ctrl-C take it back.
INTERRUPTIBLE = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_in_the_main_thread_stops_gracefully_on_a_signal(sig: signal.Signals) -> None:
    script = (
        INTERRUPTIBLE
        + ECHO_PROGRAM
        + textwrap.dedent(
            """
        @app.after_server_start
        def ready(app):
            print("ready", flush=True)

        @app.after_server_stop
        def stopped(app):
            print("stopped", flush=True)

        app.run(port=int(sys.argv[1]))
        print("returned", flush=True)
        """
        )
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        try:
            echo_then_going_away(f"ws://127.0.0.1:{port}/", lambda: process.send_signal(sig))
        except Exception as exc:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"the program said {out!r}, {err!r}") from exc
        out, err = process.communicate(timeout=seconds(10))
    finally:
        process.kill()
        process.communicate()  # reaps it and closes the pipes
    assert out.split() == ["stopped", "returned"], err
    assert process.returncode == 0, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_run_is_starting_stops_the_server_once_started(sig: signal.Signals) -> None:
    script = (
        INTERRUPTIBLE
        + ECHO_PROGRAM
        + textwrap.dedent(
            """
        @app.after_server_start
        def slow_start(app):
            print("starting", flush=True)
            sys.stdin.readline()  # until the test has sent its signal

        @app.after_server_stop
        def stopped(app):
            print("stopped", flush=True)

        app.run(port=0)
        print("returned", flush=True)
        """
        )
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "starting"
            process.send_signal(sig)  # while app.run() is still in app.start()
            # Then let the start finish. (Not with a second signal: one that
            # comes while the first is pending may go to another thread, and
            # the main thread would not see it while it waits.)
            out, err = process.communicate("go on\n", timeout=seconds(10))
        finally:
            process.kill()
    assert out.split() == ["stopped", "returned"], err
    assert process.returncode == 0, err


def test_aio_serve_in_an_existing_event_loop() -> None:
    app = embedws.App("aio")
    echo, aecho = echo_handlers()
    app.add_websocket_route(aecho, "/async")
    app.add_websocket_route(echo, "/sync")  # sync handlers work under aio.serve too

    @app.get("/")
    async def index(request: Any) -> HTTPResponse:
        return text("aio")

    async def main() -> list[Any]:
        async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
            assert server.url == f"ws://127.0.0.1:{server.port}"
            answers = []
            for path in ("/async", "/sync"):
                async with async_connect(server.url + path) as ws:
                    await ws.send(path)
                    answers.append(await ws.recv())
            return answers

    assert asyncio.run(main()) == ["/async", "/sync"]


def test_aio_serve_forever_ends_on_close() -> None:
    app = embedws.App("forever")

    @app.websocket("/")
    async def handler(request: Any, ws: Any) -> None:
        await ws.recv()
        app.ctx.server.close()

    async def main() -> str:
        server = await embedws.aio.serve(app, "127.0.0.1", 0)
        app.ctx.server = server

        async def poke() -> None:
            async with async_connect(server.url + "/") as ws:
                await ws.send("close the server")
                await ws.wait_closed()

        poker = asyncio.create_task(poke())
        await asyncio.wait_for(server.serve_forever(), seconds(10))
        await poker
        return "done"

    assert asyncio.run(main()) == "done"


def test_serving_on_a_unix_socket_and_on_a_given_socket() -> None:
    app = embedws.App("sockets")

    @app.websocket("/")
    async def handler(request: Any, ws: Any) -> None:
        await ws.send("hello")

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ws.sock")
        with app.serve(unix=path) as server:
            assert server.url == f"ws+unix://{path}"
            from websockets.sync.client import unix_connect

            with unix_connect(path, uri="ws://localhost/") as c:
                assert c.recv(timeout=seconds(5)) == "hello"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with app.serve(sock=sock) as server:
        assert server.port == port
        with client(f"ws://127.0.0.1:{port}/") as c:
            assert c.recv(timeout=seconds(5)) == "hello"


def test_ipv6_and_host_lists() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    app = embedws.App("v6")

    @app.websocket("/")
    async def handler(request: Any, ws: Any) -> None:
        await ws.send(request.ip)

    try:
        server = app.start(host=["::1"], port=0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        assert server.url == f"ws://[::1]:{server.port}"
        with client(server.url + "/") as c:
            assert c.recv(timeout=seconds(5)) == "::1"


@pytest.mark.parametrize("hosts", [["127.0.0.1", "::1"], ["::1", "127.0.0.1"]])
def test_a_host_list_with_port_0_listens_on_one_port(hosts: list[str]) -> None:
    app = embedws.App("one-port")

    @app.websocket("/")
    async def handler(request: Any, ws: Any) -> None:
        await ws.send(request.ip)

    try:
        server = app.start(host=hosts, port=0)
    except OSError:
        pytest.skip("no IPv6 here")
    with server:
        ports = {sock.getsockname()[1] for sock in server.sockets}
        assert ports == {server.port}
        assert len(server.sockets) == 2
        expected = hosts or ["0.0.0.0", "::"]
        assert server.urls == [
            f"ws://[{h}]:{server.port}" if ":" in h else f"ws://{h}:{server.port}" for h in expected
        ]
        assert server.url == server.urls[0]
        for address in ("127.0.0.1", "[::1]"):
            with client(f"ws://{address}:{server.port}/") as c:
                assert c.recv(timeout=seconds(5)) == address.strip("[]")


def test_a_failing_before_server_start_listener_aborts_the_start() -> None:
    app = embedws.App("bad-start")

    @app.before_server_start
    def fail(a: Any) -> None:
        raise RuntimeError("no config file")

    with pytest.raises(RuntimeError, match="no config file"):
        app.start(port=0)
    # the loop thread was released: nothing left running
    assert not [t for t in threading.enumerate() if t.name == "embedws-loop"]


def test_binding_a_used_port_raises_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = embedws.App("busy")
        with pytest.raises(OSError):
            app.start(port=taken.getsockname()[1])


def test_graceful_timeout_abandons_a_stuck_handler_with_a_warning(logs: Any) -> None:
    app = embedws.App("stuck", config={"GRACEFUL_SHUTDOWN_TIMEOUT": 0.3})
    release = threading.Event()
    entered = threading.Event()

    @app.websocket("/")
    def stuck(request: Any, ws: Any) -> None:
        entered.set()
        release.wait(seconds(10))  # ignores the connection entirely

    server = app.start(port=0)
    c = client(server.url + "/")
    assert entered.wait(seconds(5))
    started = time.monotonic()
    server.stop()
    elapsed = time.monotonic() - started
    release.set()
    c.close()
    assert elapsed < seconds(3)
    logs.wait_for("abandoning handler thread")


def test_stop_is_idempotent_and_safe_from_many_threads() -> None:
    app = embedws.App("many-stops")
    echo, _ = echo_handlers()
    app.add_websocket_route(echo, "/")
    server = app.start(port=0)
    threads = [threading.Thread(target=server.stop) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds(10))
    assert server.wait(0)
    server.stop()


def test_what_the_program_leaves_open_is_closed_with_1001_at_exit() -> None:
    """A program that ends without stop() or close(): its peers see 1001, not 1006."""
    script = ECHO_PROGRAM + textwrap.dedent(
        """
        @app.after_server_stop
        def stopped(app):
            print("stopped", flush=True)

        server = app.start(port=0)
        outgoing = embedws.sync.connect(sys.argv[1])
        outgoing.send("hi")
        print(server.port, flush=True)
        sys.stdin.readline()
        # neither server.stop() nor outgoing.close(): the program just ends
        """
    )
    received: list[Any] = []
    outgoing_closed = threading.Event()

    def remote(ws: Any) -> None:  # a server elsewhere that the program's client talks to
        try:
            for message in ws:
                received.append(message)
        finally:
            received.append(ws.close_code)
            outgoing_closed.set()

    from websockets.sync.server import serve as sync_serve

    with sync_serve(remote, "127.0.0.1", 0) as elsewhere:
        threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
        url = f"ws://127.0.0.1:{elsewhere.socket.getsockname()[1]}/"
        process = subprocess.Popen(
            [sys.executable, "-c", script, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert process.stdin is not None and process.stdout is not None
            port = int(process.stdout.readline())
            stdin = process.stdin

            def end_the_program() -> None:
                stdin.write("\n")
                stdin.flush()

            echo_then_going_away(f"ws://127.0.0.1:{port}/", end_the_program)
            out, err = process.communicate(timeout=seconds(20))
        finally:
            process.kill()
            process.communicate()
        assert outgoing_closed.wait(seconds(10))
        elsewhere.shutdown()
    assert out.split() == ["stopped"], err
    assert process.returncode == 0, err
    assert received == ["hi", 1001]


def _websockets_alive(path: str) -> list[object]:
    """The server-side websockets (of any kind) of requests to ``path`` still alive."""
    kinds = (embedws.aio.Websocket, embedws.sync.Websocket)
    return [
        o
        for o in gc.get_objects()
        if issubclass(type(o), kinds) and getattr(o.request, "path", None) == path
    ]


def _server_transports_alive(port: int) -> list[object]:
    """The transports of accepted connections to ``port`` still alive, open or closed."""
    return [
        o
        for o in gc.get_objects()
        if issubclass(type(o), asyncio.BaseTransport)  # not isinstance: a dead weakproxy raises
        and (o.get_extra_info("sockname") or (None, None))[1] == port
    ]


def test_a_closed_connection_is_freed_at_once_with_the_cyclic_gc_off(kind: str) -> None:
    # A connection that leaves a reference cycle is freed only by a collection of
    # the cyclic GC, whose passes a busy server then pays for (and its memory
    # waits for them). Every server-side object must go by reference counting
    # alone: the handler's websocket, its sync facade, the connection, and
    # the transport, of a websocket and of a plain HTTP request alike.
    app = embedws.App("freed")
    path = f"/freed-{kind}"  # only this test's websockets count (a failed test may leave its own)
    add_handler(app, path, kind, *echo_handlers())

    @app.get("/page")
    def page(request: embedws.Request) -> HTTPResponse:
        return text("page")

    with serving(app) as server:
        with client(server.url + path) as c:  # warm-up: pools, caches, first imports
            c.send("x")
            assert c.recv(timeout=seconds(5)) == "x"
        gc.collect()
        gc.disable()
        try:
            for _ in range(5):
                with client(server.url + path) as c:
                    c.send("x")
                    assert c.recv(timeout=seconds(5)) == "x"
            for _ in range(2):
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=seconds(5))
                conn.request("GET", "/page")
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, b"page")
                conn.close()
            # A connection that ends with a reset: asyncio 3.12+ breaks its own cycle in
            # the transport's close(), which a reset skips.
            with socket.create_connection(("127.0.0.1", server.port), seconds(5)) as raw:
                raw.sendall(b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert raw.recv(4096).startswith(b"HTTP/1.1 200 ")
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            deadline = time.monotonic() + seconds(5)

            def alive() -> list[object]:
                return _websockets_alive(path) + _server_transports_alive(server.port)

            left = alive()
            while left and time.monotonic() < deadline:
                del left
                time.sleep(10 * MS)  # polling a condition with a deadline, not a wait for time
                left = alive()
            assert left == [], f"still alive with the GC off: {left}"
        finally:
            gc.enable()
