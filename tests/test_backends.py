"""The async API on both runtimes: ``aio.serve`` under asyncio and inside trio.

anyio's pytest plugin runs every test here once per backend (``anyio_backend``).
The peer is the ``websockets`` sync client or a raw socket, in a worker thread
(``anyio.to_thread``), so the server's loop keeps running while it talks.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import pytest
import trustme
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

import embedws
from embedws.response import text

from .conftest import MS, seconds

pytestmark = pytest.mark.anyio

_T = TypeVar("_T")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    return await anyio.to_thread.run_sync(fn, *args)


def raw_request(port: int, data: bytes, *, until_close: bool = False) -> bytes:
    """Send ``data``, read until the server closes or (unless ``until_close``) one answer is in."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds(5)) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            answer = b"".join(chunks)
            head, sep, body = answer.partition(b"\r\n\r\n")
            if sep and not until_close and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
        return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def upgrade_request(path: str = "/echo", **headers: str) -> bytes:
    lines = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    lines.update({name.replace("_", "-"): value for name, value in headers.items()})
    head = "".join(f"{name}: {value}\r\n" for name, value in lines.items())
    return f"GET {path} HTTP/1.1\r\n{head}\r\n".encode()


def make_app(**config: Any) -> embedws.App:
    app = embedws.App("backends", config={"GRACEFUL_SHUTDOWN_TIMEOUT": 5, **config})

    @app.websocket("/echo")
    async def echo(request: Any, ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    @app.websocket("/crash")
    async def crash(request: Any, ws: Any) -> None:
        await ws.recv()
        raise ValueError("boom")

    @app.websocket("/bye")
    async def bye(request: Any, ws: Any) -> None:
        await ws.send(f"bye {ws.subprotocol}")

    @app.websocket("/members/<name>", subprotocols=[Subprotocol("chat")])
    async def members(request: Any, ws: Any, name: str) -> None:
        await ws.send(
            f"{name} {ws.subprotocol} {ws.open} {ws.closed} {request.path} "
            f"{ws.server_state.name} {type(ws.remote_address).__name__}"
        )
        waiter = await ws.ping()
        latency = await waiter
        await ws.send(f"latency {latency >= 0}")
        try:
            await ws.recv(timeout=10 * MS)
        except TimeoutError:
            await ws.send("timeout")
        await ws.send(f"wait_closed {await ws.wait_closed(timeout=5 * MS)}")
        await ws.send(await ws.recv())

    @app.route("/hello")
    async def hello(request: Any) -> Any:
        return text(f"hello {request.args.get('name')}")

    @app.route("/sync")
    def sync_hello(request: Any) -> Any:
        return text("from a thread", status=201)

    return app


# Handshake and messages ------------------------------------------------------


async def test_echo_text_and_binary(anyio_backend: str) -> None:
    app = make_app()
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def client() -> list[Any]:
            with ws_connect(server.url + "/echo") as ws:
                ws.send("hello")
                first = ws.recv(timeout=seconds(5))
                ws.send(b"\x00\xff" * 40_000)  # past one read, past the write limit
                second = ws.recv(timeout=seconds(5))
                ws.send(["fragmented ", "text"])
                third = ws.recv(timeout=seconds(5))
                return [first, second, third]

        assert await in_thread(client) == ["hello", b"\x00\xff" * 40_000, "fragmented text"]


async def test_members_ping_and_recv_timeout(anyio_backend: str) -> None:
    app = make_app()
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def client() -> list[Any]:
            with ws_connect(server.url + "/members/ann", subprotocols=[Subprotocol("chat")]) as ws:
                got = [ws.recv(timeout=seconds(5)) for _ in range(4)]
                ws.send("last")
                got.append(ws.recv(timeout=seconds(5)))
                return got

        assert await in_thread(client) == [
            "ann chat True False /members/ann OPEN tuple",
            "latency True",
            "timeout",
            "wait_closed False",
            "last",
        ]


async def test_a_handler_that_returns_closes_with_1000(anyio_backend: str) -> None:
    app = make_app()
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def client() -> tuple[str, int | None]:
            with ws_connect(server.url + "/bye") as ws:
                message = ws.recv(timeout=seconds(5))
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=seconds(5))
                return str(message), ws.close_code

        assert await in_thread(client) == ("bye None", 1000)


async def test_a_crashing_handler_closes_with_1011(anyio_backend: str) -> None:
    app = make_app()
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def client() -> int | None:
            with ws_connect(server.url + "/crash") as ws:
                ws.send("go")
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=seconds(5))
                return ws.close_code

        assert await in_thread(client) == 1011


async def test_a_message_over_max_size_closes_with_1009(anyio_backend: str) -> None:
    app = make_app(WEBSOCKET_MAX_SIZE=1000)
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def client() -> tuple[str, int | None]:
            with ws_connect(server.url + "/echo") as ws:
                ws.send("x" * 1000)  # the limit is inclusive
                echoed = ws.recv(timeout=seconds(5))
                ws.send("x" * 1001)
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=seconds(5))
                return str(echoed), ws.close_code

        assert await in_thread(client) == ("x" * 1000, 1009)


# Refusals --------------------------------------------------------------------


async def test_refusals_answer_with_the_asyncio_statuses(anyio_backend: str) -> None:
    app = make_app()
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
        port = server.port

        def statuses() -> dict[str, tuple[int, bytes]]:
            answers = {
                "not found": raw_request(port, upgrade_request("/nowhere")),
                "origin": raw_request(port, upgrade_request(Origin="http://evil.example")),
                "host": raw_request(port, upgrade_request(Host="evil.example")),
                "bad host": raw_request(port, upgrade_request(Host="a b")),
                "version": raw_request(port, upgrade_request(Sec_WebSocket_Version="8")),
                "plain http": raw_request(port, b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
            }
            return {name: (status_of(answer), answer) for name, answer in answers.items()}

        got = await in_thread(statuses)
    assert {name: status for name, (status, _) in got.items()} == {
        "not found": 404,
        "origin": 403,
        "host": 403,
        "bad host": 400,
        "version": 426,
        "plain http": 426,
    }
    assert b"WEBSOCKET_ORIGINS" in got["origin"][1]
    assert b"ALLOWED_HOSTS" in got["host"][1]
    assert b"sec-websocket-version: 13" in got["version"][1].lower()


async def test_http_routes_async_and_def(anyio_backend: str) -> None:
    app = make_app()
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
        port = server.port

        def requests() -> list[bytes]:
            # Two requests on one keep-alive connection, then a def handler.
            both = raw_request(
                port,
                b"GET /hello?name=ann HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                b"GET /hello?name=bob HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                until_close=True,
            )
            return [both, raw_request(port, b"GET /sync HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")]

        pipelined, sync_answer = await in_thread(requests)
    assert pipelined.count(b"HTTP/1.1 200 ") == 2
    assert pipelined.index(b"hello ann") < pipelined.index(b"hello bob")
    assert status_of(sync_answer) == 201
    assert sync_answer.endswith(b"from a thread")


# TLS and Unix sockets ----------------------------------------------------------


async def test_tls(anyio_backend: str) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    app = make_app()
    async with embedws.aio.serve(app, "127.0.0.1", 0, ssl=server_context) as server:
        assert server.url.startswith("wss://")

        def client() -> Any:
            with ws_connect(server.url + "/echo", ssl=client_context) as ws:
                ws.send("secret")
                return ws.recv(timeout=seconds(5))

        assert await in_thread(client) == "secret"


async def test_unix_socket(anyio_backend: str, tmp_path: Any) -> None:
    from websockets.sync.client import unix_connect

    path = str(tmp_path / "ws.sock")
    app = make_app()
    async with embedws.aio.serve(app, unix=path) as server:
        assert server.url == f"ws+unix://{path}"

        def client() -> Any:
            with unix_connect(path, "ws://localhost/echo") as ws:
                ws.send("local")
                return ws.recv(timeout=seconds(5))

        assert await in_thread(client) == "local"


# Shutdown ----------------------------------------------------------------------


async def test_leaving_the_block_closes_websockets_with_1001(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    connected = threading.Event()
    codes: list[int | None] = []

    def client(url: str) -> None:
        with ws_connect(url + "/echo") as ws:
            ws.send("hi")
            ws.recv(timeout=seconds(5))
            connected.set()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=seconds(5))
            codes.append(ws.close_code)

    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=client, args=(server.url,))
        thread.start()
        await in_thread(connected.wait, 5)
        port = server.port
    await in_thread(thread.join, 5)
    assert codes == [1001]
    # The handler ended with its connection: the shutdown had nothing to cancel.
    assert "still running at shutdown" not in caplog.text
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=seconds(1)).close()


async def test_cancellation_closes_websockets_with_1001(anyio_backend: str) -> None:
    app = make_app()
    connected = threading.Event()
    codes: list[int | None] = []

    def client(url: str) -> None:
        with ws_connect(url + "/echo") as ws:
            ws.send("hi")
            ws.recv(timeout=seconds(5))
            connected.set()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=seconds(5))
            codes.append(ws.close_code)

    thread: threading.Thread | None = None
    with anyio.CancelScope() as scope:
        async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
            thread = threading.Thread(target=client, args=(server.url,))
            thread.start()
            await in_thread(connected.wait, 5)
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert thread is not None
    await in_thread(thread.join, 5)
    assert codes == [1001]


async def test_an_exception_in_the_block_comes_out_as_it_is(anyio_backend: str) -> None:
    app = make_app()
    with pytest.raises(KeyError, match="mine"):
        async with embedws.aio.serve(app, "127.0.0.1", 0):
            raise KeyError("mine")


# def handlers and other threads ----------------------------------------------------


async def test_a_def_handler_in_thread_mode_echoes(anyio_backend: str) -> None:
    app = embedws.App("threads", config={"GRACEFUL_SHUTDOWN_TIMEOUT": 5})

    @app.websocket("/echo")
    def echo(request: Any, ws: Any) -> None:
        for message in ws:
            ws.send(message)

    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def client() -> list[Any]:
            with ws_connect(server.url + "/echo") as ws:
                got = []
                for i in range(50):
                    ws.send(f"m{i}")
                    got.append(ws.recv(timeout=seconds(5)))
                return got

        assert await in_thread(client) == [f"m{i}" for i in range(50)]


async def test_a_plain_thread_broadcasts_to_a_room(anyio_backend: str) -> None:
    app = embedws.App("rooms", config={"GRACEFUL_SHUTDOWN_TIMEOUT": 5})

    @app.websocket("/room")
    async def join(request: Any, ws: Any) -> None:
        app.room("lobby").add(ws)
        await ws.send("joined")
        async for _ in ws:
            pass

    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def clients() -> list[Any]:
            with ws_connect(server.url + "/room") as one, ws_connect(server.url + "/room") as two:
                assert one.recv(timeout=seconds(5)) == "joined"
                assert two.recv(timeout=seconds(5)) == "joined"
                # This thread is not the loop's: the broadcast crosses.
                sent = app.room("lobby").broadcast({"news": 1})
                return [sent, one.recv(timeout=seconds(5)), two.recv(timeout=seconds(5))]

        assert await in_thread(clients) == [2, '{"news":1}', '{"news":1}']


async def test_a_handler_broadcast_keeps_its_order_with_sends(anyio_backend: str) -> None:
    app = embedws.App("order", config={"GRACEFUL_SHUTDOWN_TIMEOUT": 5})

    @app.websocket("/order")
    async def order(request: Any, ws: Any) -> None:
        app.room("r").add(ws)
        for i in range(20):
            app.room("r").broadcast(f"b{i}")
            await ws.send(f"s{i}")

    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def client() -> list[Any]:
            with ws_connect(server.url + "/order") as ws:
                return [ws.recv(timeout=seconds(5)) for _ in range(40)]

        expected = [m for i in range(20) for m in (f"b{i}", f"s{i}")]
        assert await in_thread(client) == expected


async def test_greenlet_mode_is_refused_inside_trio(anyio_backend: str) -> None:
    app = embedws.App("greenlets")

    @app.websocket("/g", mode="greenlet")
    def handler(request: Any, ws: Any) -> None:
        ws.send("hi")

    if anyio_backend == "asyncio":
        async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

            def client() -> Any:
                with ws_connect(server.url + "/g") as ws:
                    return ws.recv(timeout=seconds(5))

            assert await in_thread(client) == "hi"
    else:
        with pytest.raises(RuntimeError, match="greenlet mode"):
            async with embedws.aio.serve(app, "127.0.0.1", 0):
                pass


async def test_await_serve_is_asyncio_only(anyio_backend: str) -> None:
    if anyio_backend == "trio":
        with pytest.raises(RuntimeError, match="async with serve"):
            await embedws.aio.serve(make_app(), "127.0.0.1", 0)
    else:
        server = await embedws.aio.serve(make_app(), "127.0.0.1", 0)
        server.close()
        await server.wait_closed()


async def test_refused_upgrades_reach_the_websockets_client(anyio_backend: str) -> None:
    app = make_app()
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def client() -> int:
            with pytest.raises(InvalidStatus) as caught:
                ws_connect(server.url + "/nowhere")
            return caught.value.response.status_code

        assert await in_thread(client) == 404


# The client ------------------------------------------------------------------------


@pytest.fixture
def websockets_server() -> Any:
    """The ``websockets`` sync server (another implementation), echoing, in a thread."""
    from websockets.sync.server import serve as ws_serve

    def handler(connection: Any) -> None:
        if connection.request.path == "/redirect":
            return
        for message in connection:
            if message == "close 4000":
                connection.close(4000, "asked")
                return
            connection.send(message)

    def process_request(connection: Any, request: Any) -> Any:
        if request.path == "/redirect":
            response = connection.respond(302, "")
            response.headers["Location"] = "/echo"
            return response
        return None

    with ws_serve(
        handler, "127.0.0.1", 0, subprotocols=[Subprotocol("chat")], process_request=process_request
    ) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            thread.join(seconds(5))


async def test_the_client_against_the_websockets_server(
    anyio_backend: str, websockets_server: Any
) -> None:
    port = websockets_server.socket.getsockname()[1]
    async with embedws.aio.connect(
        f"ws://127.0.0.1:{port}/redirect", subprotocols=[Subprotocol("chat")]
    ) as ws:
        assert ws.subprotocol == "chat"
        await ws.send("hello")
        assert await ws.recv(timeout=seconds(5)) == "hello"
        await ws.send(b"\x01" * 100_000)
        assert await ws.recv(timeout=seconds(5)) == b"\x01" * 100_000
        latency = await (await ws.ping())
        assert latency >= 0
        await ws.send("close 4000")
        with pytest.raises(embedws.errors.WebsocketClosed) as caught:
            await ws.recv(timeout=seconds(5))
        assert (caught.value.code, caught.value.reason) == (4000, "asked")
    assert ws.closed


async def test_the_client_with_tls_against_our_server(anyio_backend: str) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with embedws.aio.serve(make_app(), "127.0.0.1", 0, ssl=server_context) as server:
        async with embedws.aio.connect(server.url + "/echo", ssl=client_context) as ws:
            await ws.send("over tls")
            assert await ws.recv(timeout=seconds(5)) == "over tls"
        # Without the CA: the certificate is refused, as an embedws error.
        with pytest.raises(embedws.errors.TLSError, match="certificate verify failed"):
            await embedws.aio.connect(server.url + "/echo")


async def test_the_client_errors(anyio_backend: str) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        with pytest.raises(embedws.errors.ConnectionRefused):
            await embedws.aio.connect(f"ws://127.0.0.1:{port}/")
        unused.listen(1)  # accepts, never answers
        with pytest.raises(embedws.errors.HandshakeTimeout):
            await embedws.aio.connect(f"ws://127.0.0.1:{port}/", open_timeout=50 * MS)


async def test_the_client_refuses_a_proxy_inside_trio(anyio_backend: str) -> None:
    if anyio_backend == "asyncio":
        pytest.skip("proxies work on asyncio (tests/test_client.py)")
    with pytest.raises(embedws.errors.ProxyError, match="asyncio only"):
        await embedws.aio.connect("ws://example.invalid/", proxy="http://127.0.0.1:1")


# Backpressure ------------------------------------------------------------------------


async def test_floods_both_ways_pause_and_resume_without_loss(anyio_backend: str) -> None:
    app = make_app(WEBSOCKET_MAX_QUEUE=2)
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def client() -> bool:
            messages = [f"{i:06d}".encode() * 2000 for i in range(200)]  # 12 KB each
            with ws_connect(server.url + "/echo", max_size=None) as ws:
                # Everything is sent before anything is read: the server's queue
                # fills (reading pauses), then its writes back up (sends wait).
                def send_all() -> None:
                    for m in messages:
                        ws.send(m)

                sender = threading.Thread(target=send_all)
                sender.start()
                echoed = [ws.recv(timeout=seconds(10)) for _ in messages]
                sender.join(seconds(10))
            return echoed == messages

        assert await in_thread(client)


async def test_a_peer_that_stops_reading_is_dropped_with_1011(anyio_backend: str) -> None:
    app = embedws.App("stall", config={"WEBSOCKET_WRITE_TIMEOUT": 200 * MS})
    outcome: list[Any] = []
    started = threading.Event()
    dropped = anyio.Event()  # the handler runs on this test's loop (or trio run)

    @app.websocket("/flood")
    async def flood(request: Any, ws: Any) -> None:
        started.set()
        try:
            while True:
                await ws.send(b"x" * 65536)
        except embedws.errors.WebsocketClosed as exc:
            outcome.append((exc.sent_code, ws.backlog() <= 4 * 65536))
            dropped.set()

    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(upgrade_request("/flood"))
            await in_thread(started.wait, 5)
            with anyio.fail_after(5):
                await dropped.wait()
    assert outcome == [(1011, True)]


# The trio loop's own parts ------------------------------------------------------------


def test_trio_loop_timers_fire_in_order_and_cancelled_ones_never() -> None:
    import trio

    from embedws.aio.trio_loop import TrioLoop

    async def main() -> list[int]:
        fired: list[int] = []
        async with trio.open_nursery() as nursery:
            loop = TrioLoop(nursery)
            nursery.start_soon(loop.run_scheduler)
            done = trio.Event()
            handles = [loop.call_later(i * MS, fired.append, i) for i in (4, 1, 3, 2, 0)]
            loop.call_later(6 * MS, done.set)
            handles[2].cancel()  # 3
            # Many cancelled timers are compacted away, the armed ones kept.
            for _ in range(1000):
                loop.call_later(3600, fired.append, -1).cancel()
            assert len(loop._timers) < 100
            loop.call_soon(fired.append, 100)
            with trio.fail_after(5):
                await done.wait()
            nursery.cancel_scope.cancel()
        return fired

    assert trio.run(main) == [100, 0, 1, 2, 4]


def test_trio_futures_and_tasks() -> None:
    import trio

    from embedws.aio.trio_loop import TrioLoop

    async def main() -> list[Any]:
        got: list[Any] = []
        async with trio.open_nursery() as nursery:
            loop = TrioLoop(nursery)
            nursery.start_soon(loop.run_scheduler)
            future = loop.create_future()
            loop.call_soon(future.set_result, "value")
            got.append(await future)

            failing = loop.create_future()
            failing.set_exception(ValueError("no"))
            with pytest.raises(ValueError, match="no"):
                await failing

            async def forever() -> None:
                await trio.sleep_forever()

            async def answer() -> int:
                return 42

            task = loop.create_task(forever())
            ended = loop.create_task(answer())
            got.append(await ended)
            await trio.lowlevel.checkpoint()  # the task starts
            task.cancel()
            await task.wait_done()
            got.append(task.cancelled())

            # A waiter that gives up (its scope cancelled) leaves the future pending.
            pending = loop.create_future()
            with trio.move_on_after(5 * MS):
                await pending
            got.append(pending.done())
            nursery.cancel_scope.cancel()
        return got

    assert trio.run(main) == ["value", 42, True, False]


async def test_a_static_file_is_streamed(anyio_backend: str, tmp_path: Any) -> None:
    content = bytes(range(256)) * 4096  # 1 MiB: several chunks, past the write limit
    (tmp_path / "data.bin").write_bytes(content)
    app = make_app()
    app.static("/files", tmp_path)
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
        port = server.port
        answer = await in_thread(
            raw_request, port, b"GET /files/data.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(head) == 200
    assert body == content


async def test_leaving_the_block_ends_a_def_handler_blocked_in_recv(anyio_backend: str) -> None:
    app = embedws.App("blocked", config={"GRACEFUL_SHUTDOWN_TIMEOUT": 5})
    entered = threading.Event()
    ended: list[str] = []

    @app.websocket("/wait")
    def wait(request: Any, ws: Any) -> None:
        entered.set()
        try:
            ws.recv()
        except embedws.errors.WebsocketClosed as exc:
            ended.append(f"closed {exc.sent_code}")

    codes: list[int | None] = []

    def client(url: str) -> None:
        with ws_connect(url + "/wait") as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=seconds(5))
            codes.append(ws.close_code)

    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=client, args=(server.url,))
        thread.start()
        await in_thread(entered.wait, 5)
    # The block waited for the handler thread to see the close.
    assert ended == ["closed 1001"]
    await in_thread(thread.join, 5)
    assert codes == [1001]


async def test_a_host_list_listens_on_one_port(anyio_backend: str) -> None:
    app = make_app()
    async with embedws.aio.serve(app, ["127.0.0.1", "::1"], 0) as server:
        port = server.port
        assert server.urls == [f"ws://127.0.0.1:{port}", f"ws://[::1]:{port}"]

        def client() -> list[Any]:
            got = []
            for url in server.urls:
                with ws_connect(url + "/echo") as ws:
                    ws.send(url)
                    got.append(ws.recv(timeout=seconds(5)))
            return got

        assert await in_thread(client) == server.urls


async def test_a_bound_socket_and_an_early_close(anyio_backend: str) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = make_app()
    async with embedws.aio.serve(app, sock=sock) as server:
        assert server.port == port

        def client() -> Any:
            with ws_connect(f"ws://127.0.0.1:{port}/echo") as ws:
                ws.send("bound")
                return ws.recv(timeout=seconds(5))

        assert await in_thread(client) == "bound"
        # Closing inside the block is allowed; leaving it then has nothing left to do.
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=seconds(1)).close()


async def test_http_timers_idle_keep_alive_and_slow_request(anyio_backend: str) -> None:
    app = make_app(KEEP_ALIVE_TIMEOUT=100 * MS, REQUEST_TIMEOUT=100 * MS)
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
        port = server.port

        def idle_then_slow() -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=seconds(5)) as sock:
                sock.sendall(b"GET /hello?name=k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                # The answer, then the end of the idle keep-alive connection.
                idle = b""
                while chunk := sock.recv(65536):
                    idle += chunk
            with socket.create_connection(("127.0.0.1", port), timeout=seconds(5)) as sock:
                sock.sendall(b"GET /hello HTTP/1.1\r\n")  # and nothing more
                slow = b""
                while chunk := sock.recv(65536):
                    slow += chunk
            return idle, slow

        idle, slow = await in_thread(idle_then_slow)
    assert status_of(idle) == 200
    assert idle.endswith(b"hello k")
    assert status_of(slow) == 408


# The trio program of the descriptor test: an echo app, a limit of 128 descriptors.
TRIO_LIMITED_ECHO = """
import logging, resource, sys
import trio
import embedws

_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="RECORD %(levelname)s %(message)s"
)
app = embedws.App("limited")

@app.websocket("/")
async def echo(request, ws):
    async for message in ws:
        await ws.send(message)

async def main():
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
        print(server.port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)

trio.run(main)
"""


def test_inside_trio_idle_sockets_make_room_when_descriptors_run_out() -> None:
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-c", TRIO_LIMITED_ECHO],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    idle: list[socket.socket] = []
    try:
        assert process.stdin is not None and process.stdout is not None
        port = int(process.stdout.readline())
        # More silent connections than the server has descriptors.
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=seconds(5)))
        started = time.monotonic()
        with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=2000 * MS) as ws:
            ws.send("served")
            assert ws.recv(timeout=2000 * MS) == "served"
        assert time.monotonic() - started < 2000 * MS
        process.stdin.write("\n")
        process.stdin.flush()
        _out, err = process.communicate(timeout=20_000 * MS)
    finally:
        for sock in idle:
            sock.close()
        process.kill()
        process.communicate()
    records = [line for line in err.splitlines() if line.startswith("RECORD")]
    warnings = [r for r in records if r.startswith("RECORD WARNING")]
    assert len(records) < 10, err[:5000]
    assert len(warnings) == 1, records
    assert "out of file descriptors" in warnings[0]
    assert process.returncode == 0, err[:5000]


def test_the_asyncio_path_imports_neither_trio_nor_anyio() -> None:
    import subprocess
    import sys

    program = """
import asyncio, os, sys
import embedws
from websockets.asyncio.client import connect

FACTOR = float(os.environ.get("EMBEDWS_TESTS_TIMEOUT_FACTOR", "1"))  # as the suite's MS

app = embedws.App("plain")

@app.websocket("/echo")
async def echo(request, ws):
    async for message in ws:
        await ws.send(message)

async def main():
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
        async with embedws.aio.connect(server.url + "/echo") as ws:
            await ws.send("x")
            assert await ws.recv(timeout=5 * FACTOR) == "x"
    with app.serve(port=0) as server, server.connect("/echo") as ws:
        ws.send("y")
        assert ws.recv(timeout=5 * FACTOR) == "y"

asyncio.run(main())
print(sorted(name for name in ("trio", "anyio", "sniffio") if name in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=30_000 * MS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_a_port_in_use_raises_oserror_and_leaves_nothing_running(anyio_backend: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        app = make_app()
        with pytest.raises(OSError) as caught:
            async with embedws.aio.serve(app, "127.0.0.1", port):
                pass
        assert caught.value.errno == errno.EADDRINUSE
    # The app can serve again: nothing of the failed start is left.
    async with embedws.aio.serve(app, "127.0.0.1", 0) as server:

        def client() -> Any:
            with ws_connect(server.url + "/echo") as ws:
                ws.send("again")
                return ws.recv(timeout=seconds(5))

        assert await in_thread(client) == "again"


def test_an_app_with_a_redis_broker_is_refused_inside_trio() -> None:
    """The broker is redis-py's asyncio client: inside trio, a clear error, not a hang."""
    import trio

    app = embedws.App("broker", broker=embedws.RedisBroker("redis://127.0.0.1:9"))

    async def main() -> None:
        with pytest.raises(RuntimeError, match="asyncio"):
            async with embedws.aio.serve(app, "127.0.0.1", 0):
                pass

    trio.run(main)
