"""The client against careless and hostile servers and environments: secrets stay out of
logs and errors, credentials stay on their origin, loopback skips proxies, and every
failure is an ``embedws.errors`` type."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

import embedws
from embedws.errors import (
    ConnectError,
    EmbedwsError,
    HandshakeTimeout,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    ProxyError,
)

from .conftest import MS, echo_handlers, serving

SECRETS = ("s3cret", "t0ken", base64.b64encode(b"user:s3cret").decode())


class GaveUp(Exception):
    """Raised by the delays of a reconnecting iteration to end it."""


def few_delays(count: int = 3) -> Callable[[], Iterator[float]]:
    """``reconnect_delays`` for ``count`` immediate retries, then :class:`GaveUp`."""

    def delays() -> Iterator[float]:
        yield from [0.0] * count
        raise GaveUp

    return delays


class RawServer:
    """A TCP server on 127.0.0.1:0, in threads, that plays a broken or simple HTTP peer.

    Each connection is counted; its request head is read and kept in ``requests``;
    then ``respond(head)`` (or ``respond`` itself, if bytes) is sent and the connection
    closed. ``respond=None`` never answers; ``hold`` keeps the connection open after
    answering; ``reset`` ends it with a TCP reset; ``close_at_once`` closes it
    before reading anything. Everything still open is closed when the block ends.
    """

    def __init__(
        self,
        respond: bytes | Callable[[bytes], bytes] | None,
        *,
        hold: bool = False,
        reset: bool = False,
        close_at_once: bool = False,
    ) -> None:
        self.respond = respond
        self.hold = hold
        self.reset = reset
        self.close_at_once = close_at_once
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept)

    def url(self, path: str = "/", *, userinfo: str = "") -> str:
        return f"ws://{userinfo}127.0.0.1:{self.port}{path}"

    def __enter__(self) -> RawServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        # Wake the blocking accept() with one last connection.
        socket.create_connection(("127.0.0.1", self.port), timeout=5000 * MS).close()
        self._acceptor.join(5000 * MS)
        for thread in self._threads:
            thread.join(5000 * MS)
        self.listener.close()

    def _accept(self) -> None:
        while True:
            sock, _ = self.listener.accept()
            if self._stop.is_set():
                sock.close()
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock,))
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            if self.close_at_once:
                return
            sock.settimeout(5000 * MS)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    head += chunk
            except OSError:
                return
            self.requests.append(head)
            respond = self.respond
            answer = respond(head) if callable(respond) else respond
            if answer is None:
                self._stop.wait(10_000 * MS)
                return
            try:
                sock.sendall(answer)
            except OSError:
                return
            if self.hold:
                self._stop.wait(10_000 * MS)
            if self.reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def request_headers(head: bytes) -> dict[str, str]:
    """The headers of a recorded request head, names lower-cased."""
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = [line.split(":", 1) for line in lines if ":" in line]
    return {name.strip().lower(): value.strip() for name, value in pairs}


def path_of(head: bytes) -> str:
    return head.split(b" ", 2)[1].decode()


def answer(status: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def open_aio(url: str, **options: Any) -> None:
    async def main() -> None:
        ws = await embedws.aio.connect(url, **options)
        await ws.close()

    asyncio.run(main())


def open_sync(url: str, **options: Any) -> None:
    with embedws.sync.connect(url, **options):
        pass


OPENERS = {"aio": open_aio, "sync": open_sync}


@pytest.fixture(params=sorted(OPENERS))
def opener(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Open (and close) a client of each kind: ``embedws.aio`` and ``embedws.sync``."""
    return OPENERS[request.param]


def chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
    return seen


def assert_no_secret(caplog: pytest.LogCaptureFixture, exc: BaseException) -> None:
    texts = [f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    for link in chain(exc):
        texts += [str(link), repr(link)]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="embedws")
    return caplog


def reconnect_until_given_up(url: str, **options: Any) -> None:
    """Run ``async for ws in aio.connect(url)`` through three failed retries."""

    async def main() -> None:
        async for ws in embedws.aio.connect(url, reconnect_delays=few_delays(), **options):
            await ws.close()
            raise AssertionError("connected")

    asyncio.run(main())


# secrets stay out of logs and errors ---------------------------------------------------


def test_no_secret_when_nothing_listens_and_the_client_retries(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://user:s3cret@127.0.0.1:{port}/ws?token=t0ken"
    with pytest.raises(GaveUp) as caught:
        reconnect_until_given_up(url)
    retries = [r for r in debug_logs.records if "retrying" in r.getMessage()]
    assert len(retries) == 3
    assert retries[0].levelno == logging.INFO
    assert f"connecting to ws://***@127.0.0.1:{port}/ws?*** failed" in retries[0].getMessage()
    assert_no_secret(debug_logs, caught.value)


def test_no_secret_when_the_server_answers_500(
    debug_logs: pytest.LogCaptureFixture, opener: Callable[..., None]
) -> None:
    with RawServer(answer("500 Internal Server Error", body=b"oops")) as server:
        url = server.url("/ws?token=t0ken", userinfo="user:s3cret@")
        with pytest.raises(InvalidStatus) as caught:
            opener(url)
        assert caught.value.status == 500
        messages = [r.getMessage() for r in debug_logs.records]
        assert "> GET /ws?*** HTTP/1.1" in messages  # the handshake is logged, without secrets
        assert "> Authorization: ***" in messages
        assert_no_secret(debug_logs, caught.value)
        with pytest.raises(GaveUp) as gave_up:
            reconnect_until_given_up(url)  # 500 is retried, and logged
        assert server.connections == 5
    assert "HTTP 500" in " ".join(r.getMessage() for r in debug_logs.records)
    assert_no_secret(debug_logs, gave_up.value)


def test_no_secret_in_a_handshake_timeout(
    debug_logs: pytest.LogCaptureFixture, opener: Callable[..., None]
) -> None:
    with RawServer(None) as server:  # never answers
        url = server.url("/ws?token=t0ken", userinfo="user:s3cret@")
        with pytest.raises(HandshakeTimeout) as caught:
            opener(url, open_timeout=100 * MS)
    assert str(caught.value) == (
        f"could not open ws://***@127.0.0.1:{server.port}/ws?*** within {100 * MS} s (open_timeout)"
    )
    assert_no_secret(debug_logs, caught.value)


def test_no_secret_along_a_redirect_chain(
    debug_logs: pytest.LogCaptureFixture, opener: Callable[..., None]
) -> None:
    def redirect_again(head: bytes) -> bytes:
        hop = int(path_of(head).split("?")[0].rsplit("/", 1)[1])
        return answer("302 Found", f"Location: /hop/{hop + 1}?token=t0ken")

    with RawServer(redirect_again) as server:
        url = server.url("/hop/0?token=t0ken", userinfo="user:s3cret@")
        with pytest.raises(InvalidHandshake, match="more than 10 redirects") as caught:
            opener(url)
    assert str(caught.value).endswith(f"the last to ws://***@127.0.0.1:{server.port}/hop/11?***")
    redirected = [r.getMessage() for r in debug_logs.records if "redirected" in r.getMessage()]
    assert len(redirected) == 11
    assert redirected[0] == (
        f"redirected from ws://***@127.0.0.1:{server.port}/hop/0?*** "
        f"to ws://***@127.0.0.1:{server.port}/hop/1?***"
    )
    assert_no_secret(debug_logs, caught.value)


def test_no_secret_in_an_invalid_uri_proxy_or_redirect(
    debug_logs: pytest.LogCaptureFixture, opener: Callable[..., None]
) -> None:
    with pytest.raises(InvalidURI) as caught:
        opener("http://user:s3cret@[::1]:8080/ws?token=t0ken")
    assert str(caught.value) == (
        "'http://***@[::1]:8080/ws?***' is not a ws:// or wss:// URI: scheme isn't ws or wss"
    )
    assert_no_secret(debug_logs, caught.value)
    with pytest.raises(ProxyError) as caught_proxy:
        opener("ws://example.invalid/", proxy="ftp://user:s3cret@proxy.invalid/?token=t0ken")
    assert str(caught_proxy.value).startswith("invalid proxy 'ftp://***@proxy.invalid/?***': ")
    assert_no_secret(debug_logs, caught_proxy.value)
    with RawServer(answer("302 Found", "Location: ftp://user:s3cret@elsewhere/?token=t0ken")) as s:
        with pytest.raises(InvalidURI) as caught:
            opener(s.url("/ws?token=t0ken", userinfo="user:s3cret@"))
    assert "'ftp://***@elsewhere/?***' is not a ws:// or wss:// URI" in str(caught.value)
    assert_no_secret(debug_logs, caught.value)


# credentials stay on their origin ------------------------------------------------------


@pytest.mark.parametrize("other", ["port", "host"])
def test_a_cross_origin_redirect_drops_the_credentials(
    opener: Callable[..., None], other: str
) -> None:
    with RawServer(answer("403 Forbidden")) as landing:

        def redirect(head: bytes) -> bytes:
            if path_of(head) != "/ws":
                return answer("403 Forbidden")
            if other == "port":  # the same host, another port
                return answer("302 Found", f"Location: ws://127.0.0.1:{landing.port}/landing")
            # the same server under another name: another origin all the same
            return answer("302 Found", f"Location: ws://localhost:{first.port}/landing")

        with RawServer(redirect) as first:
            target = landing if other == "port" else first
            headers = {"authorization": "Bearer t0ken", "COOKIE": "sid=s3cret", "X-Kept": "yes"}
            with pytest.raises(InvalidStatus, match="HTTP 403"):
                opener(first.url("/ws"), headers=headers)
            with pytest.raises(InvalidStatus, match="HTTP 403"):
                opener(first.url("/ws", userinfo="user:s3cret@"))
    asked = [h for h in target.requests if path_of(h) == "/landing"]
    assert len(asked) == 2
    with_headers, with_userinfo = map(request_headers, asked)
    assert "authorization" not in with_headers
    assert "cookie" not in with_headers
    assert with_headers["x-kept"] == "yes"
    assert "authorization" not in with_userinfo
    assert request_headers(first.requests[0])["cookie"] == "sid=s3cret"  # sent to the first


def test_a_same_origin_redirect_keeps_the_credentials(opener: Callable[..., None]) -> None:
    def redirect(head: bytes) -> bytes:
        path = path_of(head)
        if path == "/ws":
            return answer("302 Found", "Location: /middle")
        if path == "/middle":  # written out in full, with no userinfo: the same origin
            return answer("302 Found", f"Location: ws://127.0.0.1:{server.port}/landing")
        return answer("403 Forbidden")

    with RawServer(redirect) as server:
        with pytest.raises(InvalidStatus, match="HTTP 403"):
            opener(server.url("/ws"), headers={"Authorization": "Bearer t0ken", "Cookie": "a=b"})
        with pytest.raises(InvalidStatus, match="HTTP 403"):
            opener(server.url("/ws", userinfo="user:s3cret@"))
    paths = [path_of(h) for h in server.requests]
    assert paths == ["/ws", "/middle", "/landing"] * 2
    headers = [request_headers(h) for h in server.requests]
    for hop in headers[:3]:
        assert (hop["authorization"], hop["cookie"]) == ("Bearer t0ken", "a=b")
    basic = base64.b64encode(b"user:s3cret").decode()
    for hop in headers[3:]:
        assert hop["authorization"] == f"Basic {basic}"


# loopback skips the proxies of the environment -----------------------------------------


@pytest.fixture
def echo_server() -> Iterator[Any]:
    app = embedws.App("client-hardening")
    echo, _ = echo_handlers()
    app.add_websocket_route(echo, "/echo")
    with serving(app) as server:
        yield server


def test_loopback_connects_directly_despite_proxy_variables(
    echo_server: Any, opener: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    with RawServer(answer("502 Bad Gateway")) as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        port = echo_server.port
        opener(f"ws://127.0.0.1:{port}/echo")
        opener(f"ws://localhost:{port}/echo")
        assert proxy.connections == 0
        with pytest.raises(ProxyError, match="HTTP 502"):  # named: used, loopback or not
            opener(f"ws://127.0.0.1:{port}/echo", proxy=f"http://127.0.0.1:{proxy.port}")
        with pytest.raises(ProxyError, match="HTTP 502"):  # other hosts: as before
            opener("ws://embedws-test.invalid/echo")
    assert [h.split(b"\r\n")[0] for h in proxy.requests] == [
        f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode(),
        b"CONNECT embedws-test.invalid:80 HTTP/1.1",
    ]


# every failure is an embedws.errors type -----------------------------------------------


@pytest.fixture(scope="module")
def tls_server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    return context


def test_ws_to_a_tls_server_suggests_wss(
    tls_server_context: ssl.SSLContext, opener: Callable[..., None]
) -> None:
    app = embedws.App("tls")
    echo, _ = echo_handlers()
    app.add_websocket_route(echo, "/echo")
    with serving(app, ssl=tls_server_context) as server:
        port = server.port
        with pytest.raises(ConnectError) as caught:
            opener(f"ws://127.0.0.1:{port}/echo")
    assert type(caught.value) is ConnectError
    assert str(caught.value) == (
        f"ws://127.0.0.1:{port}/echo: the server closed the connection during the"
        " opening handshake (if it expects TLS, use wss://)"
    )
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    ("server", "error", "message"),
    [
        pytest.param(
            {"respond": None, "close_at_once": True},
            ConnectError,
            "the server closed the connection during the opening handshake",
            id="closes-at-once",
        ),
        pytest.param(
            {"respond": b"HTTP/1.1 101 Switching Protocols\r\nUpg", "reset": True},
            ConnectError,
            "the server closed the connection during the opening handshake",
            id="resets-mid-handshake",
        ),
        pytest.param(
            {"respond": b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "hold": True},
            InvalidHandshake,
            "the server's answer is not a valid HTTP/1.1 response: invalid HTTP status line:"
            " SSH-2.0-OpenSSH_9.6",
            id="garbage-and-holds",
        ),
        pytest.param(
            {"respond": b"hello\r\n\r\n"},
            InvalidHandshake,
            "the server's answer is not a valid HTTP/1.1 response: invalid HTTP status line: hello",
            id="garbage-and-closes",
        ),
        pytest.param(
            {"respond": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello"},
            InvalidHandshake,
            "the server's answer is not a valid HTTP/1.1 response: unsupported protocol; expected "
            "HTTP/1.1: HTTP/1.0 200 OK",
            id="http-1.0",
        ),
    ],
)
def test_a_broken_server_is_an_embedws_error(
    opener: Callable[..., None], server: dict[str, Any], error: type[Exception], message: str
) -> None:
    with RawServer(**server) as raw:
        # open_timeout would end a client waiting in vain with HandshakeTimeout
        with pytest.raises(EmbedwsError) as caught:
            opener(raw.url("/ws"), open_timeout=2000 * MS)
    assert type(caught.value) is error
    hint = " (if it expects TLS, use wss://)" if error is ConnectError else ""
    assert str(caught.value) == f"ws://127.0.0.1:{raw.port}/ws: {message}{hint}"
    assert caught.value.__cause__ is not None


def test_a_closed_handshake_is_retried_and_garbage_is_not() -> None:
    with RawServer(None, close_at_once=True) as closing:
        with pytest.raises(GaveUp):
            reconnect_until_given_up(closing.url("/ws"))
        assert closing.connections == 4
    with RawServer(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", hold=True) as garbage:
        with pytest.raises(InvalidHandshake):
            reconnect_until_given_up(garbage.url("/ws"), open_timeout=2000 * MS)
        assert garbage.connections == 1


def test_uris_and_redirects_that_urllib_rejects_are_invalid_uris(
    opener: Callable[..., None],
) -> None:
    with pytest.raises(InvalidURI, match="Port out of range"):
        opener("ws://127.0.0.1:99999/")
    with RawServer(answer("302 Found", "Location: ws://[::1/")) as server:
        with pytest.raises(InvalidURI, match="redirected to an invalid location"):
            opener(server.url("/ws"))


def test_a_socks5h_proxy_is_understood(opener: Callable[..., None]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ProxyError, match=f"cannot use the SOCKS proxy socks5h://127.0.0.1:{port}"):
        opener("ws://example.invalid/", proxy=f"socks5h://127.0.0.1:{port}")


@pytest.mark.parametrize(
    "options",
    [
        {"headers": {"X-Token": "a\r\nX-Admin: yes"}},
        {"headers": [("X-Bad\nName", "v")]},
        {"origin": "http://a\r\nCookie: x"},
        {"user_agent": "agent\n"},
    ],
)
def test_a_header_with_a_line_break_is_refused_before_connecting(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="line break"):
        embedws.aio.connect("ws://127.0.0.1:1/", **options)
    with pytest.raises(ValueError, match="line break"):
        embedws.sync.connect("ws://127.0.0.1:1/", **options)
