"""The opening handshake: statuses, the security defaults (from the attacker's side),
subprotocols, middleware, capacity."""

from __future__ import annotations

import asyncio
import base64
import os
import select
import socket
import threading
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode

import embedws
from embedws.aio.runtime import pass_end_for
from embedws.response import HTTPResponse, text
from embedws.security import host_allowed, origin_allowed, rebinding_guard_warning

from .conftest import (
    add_handler,
    client,
    echo_handlers,
    raw_http,
    seconds,
    serving,
    status_of,
    upgrade_request,
)


@pytest.fixture
def server() -> Any:
    app = embedws.App("handshake")
    echo, _ = echo_handlers()
    app.add_websocket_route(echo, "/ws")
    app.add_websocket_route(echo, "/only", host="app.example")

    @app.get("/page")
    def page(request: Any) -> HTTPResponse:
        return text("page")

    with serving(app) as running:
        yield running


def rejected_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as caught:
        client(url, **kwargs)
    return caught.value.response.status_code


# statuses ----------------------------------------------------------------------


def test_unknown_websocket_path_is_404(server: Any) -> None:
    assert rejected_status(server.url + "/nowhere") == 404


def test_wrong_version_is_426_with_the_supported_version(server: Any) -> None:
    answer = raw_http(server.port, upgrade_request("/ws", version="8"))
    assert status_of(answer) == 426
    assert b"sec-websocket-version: 13" in answer.lower()
    answer = raw_http(
        server.port,
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    assert status_of(answer) == 426


def test_bad_or_missing_key_is_400(server: Any) -> None:
    answer = raw_http(
        server.port,
        upgrade_request("/ws").replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"not-base64!"),
    )
    assert status_of(answer) == 400
    answer = raw_http(
        server.port,
        upgrade_request("/ws").replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
    )
    assert status_of(answer) == 400


def test_non_get_upgrade_is_refused(server: Any) -> None:
    answer = raw_http(server.port, upgrade_request("/ws").replace(b"GET", b"POST", 1))
    assert status_of(answer) == 405


def test_upgrade_with_frames_in_the_same_packet(server: Any) -> None:
    frame = Frame(Opcode.TEXT, b"early").serialize(mask=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5)) as sock:
        sock.sendall(upgrade_request("/ws") + frame)
        data = b""
        while b"early" not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


# cross-site websocket hijacking ------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://evil.example:443",
        "null",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "http://localhost@evil.example",
        "file://",
        "chrome-extension://abcdef",
    ],
)
def test_a_foreign_origin_is_refused_with_403_naming_the_key(server: Any, origin: str) -> None:
    answer = raw_http(server.port, upgrade_request("/ws", extra=f"Origin: {origin}\r\n"))
    assert status_of(answer) == 403
    assert b"WEBSOCKET_ORIGINS" in answer


LOOPBACK_ORIGINS = [
    "http://localhost:3000",
    "http://127.0.0.1:5173",
    "https://[::1]:8443",
    "http://localhost",
]


@pytest.mark.parametrize("origin", LOOPBACK_ORIGINS)
def test_a_loopback_origin_on_another_port_is_refused_by_default(server: Any, origin: str) -> None:
    # Another local program's page (a dev server, a file previewer) is another site.
    request = upgrade_request("/ws", host=f"127.0.0.1:{server.port}", extra=f"Origin: {origin}\r\n")
    answer = raw_http(server.port, request)
    assert status_of(answer) == 403
    assert b"WEBSOCKET_ORIGINS" in answer


@pytest.mark.parametrize("origin", LOOPBACK_ORIGINS)
def test_loopback_origins_get_in_once_opted_in(origin: str) -> None:
    app = embedws.App("dev", config={"WEBSOCKET_ORIGINS": ["loopback"]})
    app.add_websocket_route(echo_handlers()[0], "/ws")
    with serving(app) as server, client(server.url + "/ws", origin=origin) as c:
        c.send("ok")
        assert c.recv(timeout=seconds(5)) == "ok"
    with serving(app) as server:
        assert rejected_status(server.url + "/ws", origin="http://evil.example") == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_the_pages_own_origin_gets_in_under_any_loopback_name(server: Any, host: str) -> None:
    # A page of http://localhost:PORT that opens ws://127.0.0.1:PORT: the same server.
    with client(server.url + "/ws", origin=f"http://{host}:{server.port}") as c:
        c.send("ok")
        assert c.recv(timeout=seconds(5)) == "ok"


def test_a_client_without_origin_gets_in(server: Any) -> None:
    with client(server.url + "/ws") as c:  # the websockets client sends no Origin
        c.send("ok")
        assert c.recv(timeout=seconds(5)) == "ok"


def test_same_origin_on_a_public_name_gets_in_and_others_do_not() -> None:
    app = embedws.App("public", config={"ALLOWED_HOSTS": ["app.example"]})
    app.add_websocket_route(echo_handlers()[0], "/ws")
    with serving(app) as server:
        host = f"app.example:{server.port}"
        ok = raw_http(
            server.port,
            upgrade_request("/ws", host=host, extra=f"Origin: http://{host}\r\n"),
            read_all=False,
        )
        assert status_of(ok) == 101
        other = raw_http(
            server.port, upgrade_request("/ws", host=host, extra="Origin: http://app.example:1\r\n")
        )
        assert status_of(other) == 403


def test_websocket_origins_opens_exactly_what_it_names() -> None:
    app = embedws.App("origins", config={"WEBSOCKET_ORIGINS": ["https://app.example"]})
    app.add_websocket_route(echo_handlers()[0], "/ws")
    with serving(app) as server:
        with client(server.url + "/ws", origin="https://app.example"):
            pass
        with client(server.url + "/ws", origin=f"http://127.0.0.1:{server.port}"):
            pass  # the page's own origin, always
        assert rejected_status(server.url + "/ws", origin="https://other.example") == 403
        # loopback origins of other ports need "loopback" in the list
        assert rejected_status(server.url + "/ws", origin="http://localhost:3000") == 403
        with client(server.url + "/ws"):  # not a browser: no Origin, allowed
            pass
    app.config.WEBSOCKET_ORIGINS = "*"
    with serving(app) as server, client(server.url + "/ws", origin="https://anything.example"):
        pass


# DNS rebinding -------------------------------------------------------------------


def test_a_foreign_host_on_a_loopback_server_is_refused(server: Any) -> None:
    for request in (
        upgrade_request("/ws", host="evil.example"),
        upgrade_request("/ws", host="evil.example", extra="Origin: http://evil.example\r\n"),
        b"GET /page HTTP/1.1\r\nHost: evil.example:8000\r\n\r\n",
    ):
        answer = raw_http(server.port, request)
        assert status_of(answer) == 403
        assert b"ALLOWED_HOSTS" in answer


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "localhost:1234", "127.0.0.2"])
def test_loopback_host_names_get_in(server: Any, host: str) -> None:
    answer = raw_http(server.port, upgrade_request("/ws", host=host), read_all=False)
    assert status_of(answer) == 101


def test_a_host_named_by_a_route_gets_in(server: Any) -> None:
    answer = raw_http(server.port, upgrade_request("/only", host="app.example"), read_all=False)
    assert status_of(answer) == 101
    # ... on that route's host only: elsewhere the route does not exist
    assert status_of(raw_http(server.port, upgrade_request("/only"))) == 404


def test_allowed_hosts_opens_exactly_what_it_names() -> None:
    app = embedws.App("hosts", config={"ALLOWED_HOSTS": ["api.example", ".corp.example"]})
    app.add_websocket_route(echo_handlers()[0], "/ws")
    with serving(app) as server:
        for host, status in [
            ("api.example", 101),
            ("a.corp.example", 101),
            ("corp.example", 101),
            ("localhost", 101),
            ("evil.example", 403),
            ("api.example.evil", 403),
        ]:
            answer = raw_http(server.port, upgrade_request("/ws", host=host), read_all=False)
            assert status_of(answer) == status, host
    app.config.ALLOWED_HOSTS = "*"
    with serving(app) as server:
        answer = raw_http(server.port, upgrade_request("/ws", host="x.example"), read_all=False)
        assert status_of(answer) == 101


def test_host_check_is_off_by_default_on_a_non_loopback_bind() -> None:
    assert host_allowed("evil.example", allowed=None, loopback_only=False, named_hosts=())
    assert not host_allowed("evil.example", allowed=None, loopback_only=True, named_hosts=())


@pytest.mark.parametrize(
    ("origin", "host", "tls", "allowed"),
    [
        (None, "x", False, True),
        ("http://x.example", "x.example", False, True),
        ("http://x.example:80", "x.example", False, True),
        ("https://x.example", "x.example", True, True),
        ("https://x.example", "x.example", False, False),
        ("http://x.example:8080", "x.example:8080", False, True),
        ("http://x.example:8080", "x.example:8081", False, False),
        ("http://X.Example:8080", "x.example:8080", False, True),
        ("http://[::1]:9", "x.example", False, False),
        ("http://127.5.6.7:9", "x.example", False, False),
        ("http://localhost:8000", "127.0.0.1:8000", False, True),
        ("http://[::1]:8000", "localhost:8000", False, True),
        ("http://localhost:8001", "127.0.0.1:8000", False, False),
        ("http://localhost:8000", "x.example:8000", False, False),
        ("http://localhost.", "x.example", False, False),
        ("ftp://localhost", "x.example", False, False),
        ("http://localhost/path", "x.example", False, False),
        ("", "x.example", False, False),
    ],
)
def test_origin_rule(origin: str | None, host: str, tls: bool, allowed: bool) -> None:
    assert origin_allowed(origin, host, tls=tls, allowed=None) is allowed


# subprotocols ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["superchat", "chat"], "chat"),
        (["superchat"], "superchat"),
        (["other"], None),
        (None, None),
    ],
)
def test_subprotocol_is_the_servers_first_preference_the_client_offered(
    offered: list[str] | None, chosen: str | None
) -> None:
    app = embedws.App("subprotocols")
    app.add_websocket_route(echo_handlers()[0], "/ws", subprotocols=["chat", "superchat"])
    with serving(app) as server, client(server.url + "/ws", subprotocols=offered) as c:
        assert c.subprotocol == chosen


# middleware --------------------------------------------------------------------


def test_on_request_middleware_rejects_the_handshake_and_feeds_ctx(kind: str) -> None:
    app = embedws.App("auth")
    seen: list[str] = []
    done = threading.Event()

    @app.on_request
    async def authenticate(request: Any) -> HTTPResponse | None:
        token = request.args.get("token")
        if token != "secret":
            return text("who are you?", status=401)
        request.ctx.user = "alice"
        return None

    def handler(request: Any, ws: Any) -> None:
        seen.append(request.ctx.user)
        ws.send(request.ctx.user)
        done.set()

    async def ahandler(request: Any, ws: Any) -> None:
        seen.append(request.ctx.user)
        await ws.send(request.ctx.user)
        done.set()

    add_handler(app, "/ws", kind, handler, ahandler)
    with serving(app) as server:
        with pytest.raises(InvalidStatus) as caught:
            client(server.url + "/ws?token=wrong")
        assert caught.value.response.status_code == 401
        assert caught.value.response.body == b"who are you?"
        with client(server.url + "/ws?token=secret") as c:
            assert c.recv(timeout=seconds(5)) == "alice"
        assert done.wait(seconds(5))
    assert seen == ["alice"]


def test_on_response_middleware_adds_headers_to_the_101() -> None:
    app = embedws.App("cookies")
    app.add_websocket_route(echo_handlers()[0], "/ws")

    @app.on_response
    def set_cookie(request: Any, response: HTTPResponse) -> None:
        if response.status == 101:
            response.headers.add("Set-Cookie", "session=xyz; HttpOnly")

    with serving(app) as server, client(server.url + "/ws") as c:
        assert c.response is not None
        assert c.response.headers["Set-Cookie"] == "session=xyz; HttpOnly"


def test_listeners_run_in_order_with_the_app() -> None:
    app = embedws.App("listeners")
    calls: list[tuple[str, bool]] = []
    for event in ("before_server_start", "after_server_start"):
        app.listener(event)(lambda a, event=event: calls.append((event, a is app)))

    @app.before_server_stop
    async def before_stop(a: Any) -> None:
        calls.append(("before_server_stop", a is app))

    @app.after_server_stop
    def after_stop(a: Any) -> None:
        calls.append(("after_server_stop", a is app))

    with serving(app):
        assert calls == [("before_server_start", True), ("after_server_start", True)]
    assert [name for name, _ in calls] == [
        "before_server_start",
        "after_server_start",
        "before_server_stop",
        "after_server_stop",
    ]
    assert all(ok for _, ok in calls)


# capacity ------------------------------------------------------------------------


def test_past_max_connections_new_upgrades_get_503_and_others_keep_working(kind: str) -> None:
    app = embedws.App("full", config={"MAX_CONNECTIONS": 2})
    add_handler(app, "/ws", kind, *echo_handlers())
    with serving(app) as server:
        with client(server.url + "/ws") as first, client(server.url + "/ws") as second:
            assert rejected_status(server.url + "/ws") == 503
            first.send("still")
            second.send("here")
            assert (first.recv(timeout=seconds(5)), second.recv(timeout=seconds(5))) == (
                "still",
                "here",
            )
        with client(server.url + "/ws") as again:  # room again once they left
            again.send("x")
            assert again.recv(timeout=seconds(5)) == "x"


def test_past_sync_handler_threads_new_upgrades_get_503() -> None:
    app = embedws.App("threads", config={"SYNC_HANDLER_THREADS": 2})
    echo, aecho = echo_handlers()
    app.add_websocket_route(echo, "/sync")
    app.add_websocket_route(aecho, "/async")
    with serving(app) as server:
        with client(server.url + "/sync") as a, client(server.url + "/sync") as b:
            assert rejected_status(server.url + "/sync") == 503
            with client(server.url + "/async") as c:  # async handlers use no thread
                c.send("async")
                assert c.recv(timeout=seconds(5)) == "async"
            a.send("a")
            assert a.recv(timeout=seconds(5)) == "a"
            b.send("b")
            assert b.recv(timeout=seconds(5)) == "b"


def test_random_key_handshake_bytes_on_the_wire(server: Any) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    request = upgrade_request("/ws").replace(b"dGhlIHNhbXBsZSBub25jZQ==", key.encode())
    answer = raw_http(server.port, request, read_all=False)
    head = answer.split(b"\r\n\r\n")[0].decode().lower().split("\r\n")
    assert head[0] == "http/1.1 101 switching protocols"
    assert "upgrade: websocket" in head and "connection: upgrade" in head
    import hashlib

    expected = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    assert f"sec-websocket-accept: {expected.lower()}" in head


@pytest.mark.parametrize(
    ("addresses", "allowed", "warns"),
    [
        (["127.0.0.1", "::1"], None, False),
        (["0.0.0.0"], None, True),
        (["127.0.0.1", "::"], None, True),
        (["192.0.2.7"], None, True),
        (["0.0.0.0"], ["app.example"], False),
        (["0.0.0.0"], "*", False),
        ([], None, False),  # a Unix socket
    ],
)
def test_a_server_reachable_from_the_network_says_the_rebinding_guard_is_off(
    addresses: list[str], allowed: Any, warns: bool
) -> None:
    warning = rebinding_guard_warning(addresses, allowed)
    assert (warning is not None) is warns
    if warning is not None:
        assert "ALLOWED_HOSTS" in warning and "off" in warning
        assert all(a in warning for a in addresses if a not in ("127.0.0.1", "::1"))


def test_the_101s_of_a_busy_loop_pass_leave_together_at_its_end() -> None:
    """Upgrades our loop reads in one pass are answered when the pass ends, not
    between its callbacks: each 101 written between the pass's requests woke a
    waiting client (an inter-processor interrupt, about 10 µs of the server's
    kernel time per handshake on this machine). The second request's
    middleware looks at the first client's socket: nothing there yet."""
    app = embedws.App("together")
    first: list[socket.socket] = []
    seen: list[bool] = []  # whether the first client had its answer already
    gated, sent = threading.Event(), threading.Event()
    ours: list[bool] = []

    @app.on_request
    async def look_at_the_first_client(request: Any) -> None:
        if request.path == "/gate":
            ours.append(pass_end_for(asyncio.get_running_loop()) is not None)
            gated.set()
            sent.wait(seconds(5))  # blocks the loop while both upgrades arrive
        elif request.path == "/b":  # the upgrade of /a was handled just before
            readable, _, _ = select.select(first, [], [], 0)
            seen.append(bool(readable))

    async def greet(request: Any, ws: Any) -> None:
        await ws.send(request.path[1:])

    for path in ("/gate", "/a", "/b"):
        app.add_websocket_route(greet, path)

    def answer(sock: socket.socket, frame: bytes) -> bytes:
        data = b""
        while frame not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    with serving(app) as server:
        address = ("127.0.0.1", server.port)
        with (
            socket.create_connection(address, seconds(5)) as gate,
            socket.create_connection(address, seconds(5)) as sock_a,
            socket.create_connection(address, seconds(5)) as sock_b,
        ):
            first.append(sock_a)
            gate.sendall(upgrade_request("/gate"))
            assert gated.wait(seconds(5))
            # The loop is held in the gate's middleware: it reads both at once after.
            sock_a.sendall(upgrade_request("/a"))
            sock_b.sendall(upgrade_request("/b"))
            sent.set()
            answers = [answer(sock_a, b"\x81\x01a"), answer(sock_b, b"\x81\x01b")]
            assert b"\x81\x04gate" in answer(gate, b"\x81\x04gate")
    assert [status_of(data) for data in answers] == [101, 101]
    # After each 101, its handler's first frame.
    assert b"\x81\x01a" in answers[0] and b"\x81\x01b" in answers[1]
    if not ours[0]:
        pytest.skip("not our batching loop (a fast path is off, or uvloop)")
    assert seen == [False]
