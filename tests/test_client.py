"""The clients (sync and aio) against embedws and `websockets` servers; TLS, proxies,
redirects, reconnection, and the errors a user sees."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pproxy
import pytest
import trustme
from websockets.asyncio.server import serve as ws_serve
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

import embedws
from embedws.errors import (
    ConnectionRefused,
    HandshakeTimeout,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    NameResolutionError,
    ProxyError,
    TLSError,
    WebsocketClosed,
)
from embedws.response import HTTPResponse, redirect, text

from .conftest import ECHO_PROGRAM, echo_handlers, seconds, serving


def fast_delays() -> Iterator[float]:
    while True:
        yield 0.05


@pytest.fixture
def app() -> embedws.App:
    app = embedws.App("client-tests")
    echo, _ = echo_handlers()
    app.add_websocket_route(echo, "/echo", subprotocols=[Subprotocol("chat")])

    @app.websocket("/info")
    async def info(request: Any, ws: Any) -> None:
        await ws.send(
            {
                "x-token": request.headers.get("x-token"),
                "origin": request.headers.get("origin"),
                "extensions": request.headers.get("sec-websocket-extensions"),
                "user-agent": request.headers.get("user-agent"),
            }
        )
        await ws.wait_closed(5)

    @app.websocket("/close/<code:int>")
    async def close_with(request: Any, ws: Any, code: int) -> None:
        await ws.close(code, "server says bye")

    @app.websocket("/report")
    async def report(request: Any, ws: Any) -> None:
        try:
            await ws.recv()
        except WebsocketClosed as exc:
            app.ctx.closed_with = (exc.code, exc.reason)
            app.ctx.reported.set()

    for path in ("/old", "/loop", "/refuse"):  # answered by the middleware below
        app.add_websocket_route(echo, path, name=path)

    @app.on_request
    def old_path(request: Any) -> HTTPResponse | None:
        if request.path == "/old":
            return redirect("/echo")
        if request.path == "/loop":
            return redirect("/loop")
        if request.path == "/refuse":
            return text("go away", status=403, headers={"X-Why": "testing"})
        return None

    app.ctx.reported = threading.Event()
    return app


@pytest.fixture
def server(app: embedws.App) -> Any:
    with serving(app) as running:
        yield running


# embedws client <-> embedws server ------------------------------------------------


def test_sync_connect_returns_an_open_websocket(server: Any) -> None:
    ws = embedws.sync.connect(server.url + "/echo")
    try:
        assert ws.open and isinstance(ws, embedws.sync.ClientWebsocket)
        ws.send("at once")
        assert ws.recv(timeout=seconds(5)) == "at once"
    finally:
        ws.close()
    assert ws.closed and ws.close_code == 1000
    ws = server.connect("/echo")  # the same, relative to the server
    with ws:
        ws.send("again")
        assert ws.recv(timeout=seconds(5)) == "again"
    assert ws.closed


def test_sync_connect_does_not_take_reconnect_options(server: Any) -> None:
    with pytest.raises(TypeError, match="reconnect"):
        embedws.sync.connect(server.url + "/echo", reconnect_delays=fast_delays)


def test_sync_client_round_trip_and_properties(server: Any) -> None:
    with embedws.sync.connect(server.url + "/echo", subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response.status == 101
        ws.send("text")
        assert ws.recv(timeout=seconds(5)) == "text"
        ws.send(b"\x00bytes")
        assert ws.recv(timeout=seconds(5)) == b"\x00bytes"
        ws.send({"json": True})
        assert ws.recv(timeout=seconds(5)) == '{"json":true}'
        assert ws.ping().wait(seconds(5)) is True
        assert (ws.open, ws.closed) == (True, False)  # a tuple: mypy keeps ws.closed a bool
        assert ws.server_state is embedws.State.OPEN
        assert ws.remote_address[1] == server.port
    assert ws.closed and ws.close_code == 1000


def test_aio_client_round_trip(server: Any) -> None:
    async def main() -> list[Any]:
        async with embedws.aio.connect(server.url + "/echo") as ws:
            await ws.send("one")
            first = await ws.recv(timeout=seconds(5))
            waiter = await ws.ping()
            latency = await asyncio.wait_for(waiter, seconds(5))

            async def parts() -> Any:
                yield "a"
                yield "b"

            await ws.send(parts())
            second = await ws.recv(timeout=seconds(5))
            return [first, latency > 0, second]

    assert asyncio.run(main()) == ["one", True, "ab"]


def test_custom_headers_origin_and_compression(server: Any) -> None:
    import json

    with server.connect(
        "/info", headers={"X-Token": "t0k"}, origin=f"http://localhost:{server.port}"
    ) as ws:
        info = json.loads(ws.recv(timeout=seconds(5)))
    assert info["x-token"] == "t0k"
    assert info["origin"] == f"http://localhost:{server.port}"
    assert "permessage-deflate" in info["extensions"]
    assert info["user-agent"].startswith("embedws")
    with server.connect("/info", compression=None) as ws:
        assert json.loads(ws.recv(timeout=seconds(5)))["extensions"] is None


def test_close_codes_in_both_directions(server: Any, app: embedws.App) -> None:
    with server.connect("/close/4001") as ws:
        with pytest.raises(WebsocketClosed) as caught:
            ws.recv(timeout=seconds(5))
    assert (caught.value.code, caught.value.reason) == (4001, "server says bye")
    ws = server.connect("/report")
    ws.close(4002, "client says bye")
    assert app.ctx.reported.wait(seconds(5))
    assert app.ctx.closed_with == (4002, "client says bye")


def test_the_sync_client_from_several_threads(server: Any) -> None:
    with server.connect("/echo", max_size=None) as ws:

        def send(index: int) -> None:
            for n in range(50):
                ws.send(f"{index}:{n}:" + "x" * 2000)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        got = [ws.recv(timeout=seconds(5)) for _ in range(300)]
        for thread in threads:
            thread.join(seconds(5))
    assert isinstance(got[0], str)
    for index in range(6):
        mine = [int(str(m).split(":")[1]) for m in got if str(m).startswith(f"{index}:")]
        assert mine == list(range(50))


def test_reconnects_after_the_server_restarts(app: embedws.App) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = app.start(port=port)
    answers: list[str] = []
    try:
        for ws in embedws.sync.reconnect(
            f"ws://127.0.0.1:{port}/echo", reconnect_delays=fast_delays
        ):
            try:
                ws.send(f"attempt {len(answers)}")
                answers.append(str(ws.recv(timeout=seconds(5))))
                if len(answers) == 1:
                    server.stop()  # the client sees 1001
                    ws.recv(timeout=seconds(5))
                else:
                    break
            except WebsocketClosed:
                server = app.start(port=port)  # back again: the loop reconnects
                continue
    finally:
        server.stop()
    assert answers == ["attempt 0", "attempt 1"]


def test_aio_reconnecting_iteration(app: embedws.App) -> None:
    async def main() -> list[str]:
        async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
            got: list[str] = []
            async for ws in embedws.aio.connect(server.url + "/echo", reconnect_delays=fast_delays):
                await ws.send(str(len(got)))
                got.append(str(await ws.recv(timeout=seconds(5))))
                if len(got) == 3:
                    break
            return got

    assert asyncio.run(main()) == ["0", "1", "2"]


def test_a_redirect_is_followed(server: Any) -> None:
    with server.connect("/old") as ws:
        ws.send("redirected")
        assert ws.recv(timeout=seconds(5)) == "redirected"
    with pytest.raises(InvalidHandshake, match="more than 10 redirects"):
        server.connect("/loop")


# embedws client <-> websockets server, and the other way round ----------------------


@contextlib.contextmanager
def websockets_server() -> Iterator[int]:
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with ws_serve(echo, "127.0.0.1", 0, subprotocols=[Subprotocol("chat")]) as server:
            holder["port"] = server.sockets[0].getsockname()[1]
            holder["stop"] = asyncio.Event()
            holder["loop"] = asyncio.get_running_loop()
            ready.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    assert ready.wait(seconds(5))
    try:
        yield holder["port"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(seconds(5))


def test_embedws_clients_against_a_websockets_server() -> None:
    with websockets_server() as port:
        with embedws.sync.connect(f"ws://127.0.0.1:{port}", subprotocols=["chat"]) as ws:
            assert ws.subprotocol == "chat"
            ws.send("sync")
            assert ws.recv(timeout=seconds(5)) == "sync"
            ws.send(iter([b"frag", b"ments"]))
            assert ws.recv(timeout=seconds(5)) == b"fragments"

        async def main() -> Any:
            async with embedws.aio.connect(f"ws://127.0.0.1:{port}", subprotocols=["chat"]) as ws:
                await ws.send("aio")
                return await ws.recv(timeout=seconds(5))

        assert asyncio.run(main()) == "aio"


# TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


def test_wss_between_embedws_and_websockets_both_ways(
    app: embedws.App, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls_contexts
    with serving(app, ssl=server_context) as server:
        assert server.url.startswith("wss://127.0.0.1:")
        with ws_connect(server.url + "/echo", ssl=client_context, legacy=True) as ws:
            ws.send("websockets -> embedws over TLS")
            assert ws.recv(timeout=seconds(5)) == "websockets -> embedws over TLS"
        with server.connect("/echo", ssl=client_context) as ws:
            ws.send("embedws -> embedws over TLS")
            assert ws.recv(timeout=seconds(5)) == "embedws -> embedws over TLS"


def test_wss_server_from_a_cert_and_key_mapping(
    app: embedws.App, ca: trustme.CA, tmp_path: Path
) -> None:
    cert = ca.issue_cert("localhost")
    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with serving(app, ssl={"cert": str(pem)}) as server:
        url = f"wss://localhost:{server.port}/echo"
        with embedws.sync.connect(url, ssl=client_context) as ws:
            ws.send("mapping")
            assert ws.recv(timeout=seconds(5)) == "mapping"


def test_an_untrusted_certificate_fails_cleanly_on_both_ends(
    app: embedws.App, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, _ = tls_contexts
    with serving(app, ssl=server_context) as server:
        with pytest.raises(TLSError, match="certificate verify failed"):
            server.connect("/echo")  # certifi's CAs do not include the test CA
        other = trustme.CA()
        wrong_name = ssl.create_default_context()
        other.configure_trust(wrong_name)
        with pytest.raises(TLSError):
            server.connect("/echo", ssl=wrong_name)
        _, good = tls_contexts
        with server.connect("/echo", ssl=good) as ws:  # the server is fine afterwards
            ws.send("still serving")
            assert ws.recv(timeout=seconds(5)) == "still serving"


def test_a_tcp_client_that_never_starts_tls_is_dropped(
    app: embedws.App, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    import time

    server_context, _ = tls_contexts
    with serving(app, ssl=server_context, WEBSOCKET_TIMEOUT=0.3) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5))
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server
        assert 0.25 <= time.monotonic() - started < seconds(3)
        sock.close()


# Proxies --------------------------------------------------------------------------


@contextlib.contextmanager
def proxy_server(scheme: str, auth: str | None = None) -> Iterator[int]:
    """A real proxy (pproxy) on a free loopback port, in its own thread."""
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # pproxy calls get_event_loop()
        # pproxy starts its relay tasks with ensure_future and keeps no
        # reference: the garbage collector may destroy one mid-transfer
        # ("Task was destroyed but it is pending!"). Keep them alive.
        tasks: set[asyncio.Task[Any]] = set()

        def keep(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kwargs)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return task

        loop.set_task_factory(keep)
        uri = f"{scheme}://127.0.0.1:0" + (f"#{auth}" if auth else "")
        server = loop.run_until_complete(
            pproxy.Server(uri).start_server({"rserver": [], "verbose": lambda *a: None})
        )
        holder["port"] = server.sockets[0].getsockname()[1]
        holder["loop"] = loop
        ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=run)
    thread.start()
    assert ready.wait(seconds(5))
    try:
        yield holder["port"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["loop"].stop)
        thread.join(seconds(5))


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_through_a_real_proxy(server: Any, scheme: str) -> None:
    with proxy_server(scheme) as port:
        proxy = f"{scheme}://127.0.0.1:{port}"
        with server.connect("/echo", proxy=proxy) as ws:
            ws.send(f"through {scheme}")
            assert ws.recv(timeout=seconds(5)) == f"through {scheme}"


def test_a_proxy_refusal_is_a_proxy_error_and_credentials_are_sent(server: Any) -> None:
    """A proxy that answers CONNECT with 407: what it saw, and what the user sees."""
    seen: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def refuse() -> None:
            conn, _ = listener.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                seen.append(data)
                conn.sendall(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b"Proxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"
                )

        thread = threading.Thread(target=refuse)
        thread.start()
        with pytest.raises(ProxyError, match=r"refused to connect .* HTTP 407"):
            server.connect("/echo", proxy=f"http://user:s%3Acret@127.0.0.1:{port}")
        thread.join(seconds(5))
    request = seen[0].decode()
    assert request.startswith(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n")
    credentials = base64.b64encode(b"user:s:cret").decode()
    assert f"\r\nProxy-Authorization: Basic {credentials}\r\n" in request


# Errors a user understands ----------------------------------------------------------


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefused, match=re.escape(f"127.0.0.1:{port}")):
        embedws.sync.connect(f"ws://127.0.0.1:{port}/")


def test_dns_failure() -> None:
    with pytest.raises(
        NameResolutionError, match=re.escape("cannot resolve 'no-such-host.invalid'")
    ):
        embedws.sync.connect("ws://no-such-host.invalid/", proxy=None)


def test_a_non_101_answer_carries_status_headers_and_body(server: Any) -> None:
    with pytest.raises(InvalidStatus) as caught:
        server.connect("/refuse")
    assert caught.value.status == 403
    assert caught.value.headers["X-Why"] == "testing"
    assert caught.value.body == b"go away"
    assert "HTTP 403" in str(caught.value)
    with pytest.raises(InvalidStatus) as caught:
        server.connect("/nowhere")
    assert caught.value.status == 404


def test_a_silent_server_is_a_handshake_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(HandshakeTimeout, match="open_timeout") as caught:
            embedws.sync.connect(f"ws://127.0.0.1:{port}/", open_timeout=seconds(0.3))
        assert isinstance(caught.value, TimeoutError)


def test_an_invalid_uri() -> None:
    with pytest.raises(InvalidURI, match="not a ws:// or wss:// URI"):
        embedws.sync.connect("http://example.com/")


def test_a_blocking_connect_on_the_loop_thread_raises() -> None:
    app = embedws.App("guard")
    errors: list[str] = []

    @app.websocket("/")
    async def handler(request: Any, ws: Any) -> None:
        try:
            embedws.sync.connect("ws://127.0.0.1:1/")
        except RuntimeError as exc:
            errors.append(str(exc))
        await ws.send("done")

    with serving(app) as server, server.connect("/") as ws:
        assert ws.recv(timeout=seconds(5)) == "done"
    assert errors and "event loop thread" in errors[0]


def test_the_interpreter_exits_promptly_with_a_client_and_a_server_still_open() -> None:
    import subprocess
    import sys
    import textwrap
    import time

    script = ECHO_PROGRAM + textwrap.dedent(
        """
        import os
        FACTOR = float(os.environ.get("EMBEDWS_TESTS_TIMEOUT_FACTOR", "1"))  # as the suite's MS
        server = app.start(port=0)
        ws = server.connect("/")
        ws.send("hi")
        print(ws.recv(timeout=5 * FACTOR), flush=True)
        # neither ws.close() nor server.stop(): the program just ends
        """
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=seconds(30),
        check=False,
    )
    assert result.stdout.strip() == "hi", result.stderr
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < seconds(10)


def test_sync_client_writes_keep_their_order_when_the_socket_fills_up() -> None:
    """Direct writes from the calling thread hand their rest to the loop, in order."""
    app = embedws.App("full-socket", config={"WEBSOCKET_MAX_SIZE": 2**20})
    release = threading.Event()
    got: list[int] = []

    @app.websocket("/")
    def slow_reader(request: Any, ws: Any) -> None:
        release.wait(seconds(10))  # the client's writes pile up in the kernel meanwhile
        for _ in range(400):
            got.append(int(ws.recv(timeout=seconds(10))[:6]))
        ws.send("all read")

    with serving(app) as server, server.connect("/", compression=None) as ws:

        def send_from(start: int) -> None:
            for n in range(start, 400, 4):
                ws.send(f"{n:06d}" + "x" * 65536)

        senders = [threading.Thread(target=send_from, args=(start,)) for start in range(4)]
        for thread in senders:
            thread.start()
        # Until the socket is full and writes queue up in the transport.
        deadline = time.monotonic() + seconds(10)
        while not ws.connection.writing_paused and time.monotonic() < deadline:
            time.sleep(seconds(0.001))
        assert ws.connection.writing_paused
        release.set()
        for thread in senders:
            thread.join(seconds(20))
        assert ws.recv(timeout=seconds(20)) == "all read"
    assert sorted(got) == list(range(400))
    for start in range(4):  # each thread's messages in the order it sent them
        mine = [n for n in got if n % 4 == start]
        assert mine == sorted(mine)
