"""The async client: ``embedws.aio.connect(uri)``.

A client connection is the same [`Connection`][embedws.aio.Connection]
as on the server side, driven by the ``websockets`` Sans-I/O ``ClientProtocol``.
Opening one: resolve the proxy (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``
or ``proxy=``), open TCP (through an HTTP CONNECT tunnel written with h11, or
SOCKS with the ``python-socks`` extra), start TLS for ``wss://`` (certifi's CA
bundle unless ``ssl=`` says otherwise), send the handshake and wait for the
101, following up to 10 redirects (never from ``wss://`` to ``ws://``). All of
it is bounded by ``open_timeout``. Errors come out as ``embedws.errors``
classes; ``async for ws in connect(...)`` reconnects with exponential backoff.

Secrets: a URI's userinfo (Basic credentials) and query (often a token) never
appear in a log record or an exception message; `_redact()` shows such a
URI as ``ws://***@host:port/path?***``. Credentials (userinfo,
``Authorization``, ``Cookie``) follow a redirect only within their origin.
Loopback destinations ignore the proxy variables of the environment.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import socket
import ssl as ssl_module
import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, cast
from urllib.parse import urljoin, urlsplit, urlunsplit

import h11
from websockets.client import backoff
from websockets.exceptions import InvalidHandshake as WSInvalidHandshake
from websockets.exceptions import InvalidMessage, InvalidProxy
from websockets.exceptions import InvalidStatus as WSInvalidStatus
from websockets.exceptions import InvalidURI as WSInvalidURI
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.headers import build_host
from websockets.http11 import Response as WSResponse
from websockets.protocol import CONNECTING
from websockets.proxy import Proxy, get_proxy, parse_proxy
from websockets.typing import Origin, Subprotocol
from websockets.uri import WebSocketURI, parse_uri

from ..errors import (
    ConnectError,
    ConnectionRefused,
    HandshakeTimeout,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    NameResolutionError,
    ProxyError,
    TLSError,
)
from ..protocol import ClientProtocol
from ..response import HTTPResponse
from ..security import is_loopback_name
from ..tls import client_context
from .connection import Connection, ProtocolLogger, Settings, Websocket
from .runtime import is_asyncio, running_loop, shield, sleep, timeout_at

__all__ = ["ClientOptions", "ConnectSpec", "connect", "open_connection"]

logger = logging.getLogger("embedws.client")

USER_AGENT = "embedws Python/{}.{}".format(*sys.version_info[:2])
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Dropped on a redirect to another origin, as browsers, httpx and websockets do.
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
# Shown as *** in the handshake's debug log.
_SECRET_HEADERS = _CREDENTIAL_HEADERS | {"set-cookie"}
_client_ids = itertools.count(1)


def _redact(uri: str) -> str:
    """``uri`` for logs and error messages: userinfo, query and fragment shown as ``***``.

    Scheme, host, port and path stay, so the reader still sees where the client
    went; what is left out is where credentials and tokens usually are.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:  # not even a URL: show nothing of it
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if parts.query:
        shown += "?***"
    if parts.fragment:
        shown += "#***"
    return shown


class _HandshakeLogger(ProtocolLogger):
    """The client's Sans-I/O logger: handshake lines without tokens or credentials.

    ``websockets`` logs the request line and every header of the handshake at
    DEBUG; the query of the request line and the values of credential headers
    are replaced by ``***``. The format strings are those of ``websockets``'
    ``ClientProtocol`` (pinned range); tests/test_client_hardening.py notices
    if they change.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if msg == "> GET %s HTTP/1.1" and len(args) == 1:
            args = (_redact(str(args[0])),)
        elif msg in ("> %s: %s", "< %s: %s") and len(args) == 2:
            name = str(args[0]).lower()
            if name in _SECRET_HEADERS:
                args = (args[0], "***")
            elif name == "location":
                args = (args[0], _redact(str(args[1])))
        super().log(level, msg, *args, **kwargs)


_handshake_logger = _HandshakeLogger(logging.getLogger("embedws.protocol"), {})


class ClientOptions:
    """The options of ``connect``, validated once (shared by reconnections)."""

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        origin: str | None = None,
        open_timeout: float | None = 10,
        ssl: ssl_module.SSLContext | None = None,
        compression: str | None = "deflate",
        max_size: int | None = 2**20,
        max_queue: int = 32,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float = 10,
        write_timeout: float = 30,
        proxy: str | bool | None = True,
        user_agent: str | None = USER_AGENT,
    ) -> None:
        if compression not in (None, "deflate"):
            raise ValueError(f"compression must be 'deflate' or None, not {compression!r}")
        self.subprotocols = [Subprotocol(p) for p in subprotocols] if subprotocols else None
        pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
        self.headers = [(str(k), str(v)) for k, v in pairs]
        for name, value in [
            *self.headers,
            ("Origin", origin or ""),
            ("User-Agent", user_agent or ""),
        ]:
            # A line break would end the header and start another one of the
            # caller's data (header injection); nothing below checks.
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError(f"the {name!r} header contains a line break or a NUL")
        self.origin = Origin(origin) if origin is not None else None
        self.open_timeout = open_timeout
        self.ssl = ssl
        self.extensions = enable_client_permessage_deflate(None) if compression else None
        self.max_size = max_size
        self.proxy = proxy
        self.user_agent = user_agent
        self.settings = Settings(
            close_timeout=close_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_queue=max_queue,
            write_timeout=write_timeout,
        )


def _parse(uri: str) -> WebSocketURI:
    try:
        return parse_uri(uri)
    except WSInvalidURI as exc:
        shown = _redact(uri)
        exc.uri, exc.args = shown, (shown, exc.msg)  # the cause shows it too
        raise InvalidURI(f"{shown!r} is not a ws:// or wss:// URI: {exc.msg}") from exc
    except ValueError as exc:  # urllib's: a port out of range, undecodable userinfo...
        raise InvalidURI(f"{_redact(uri)!r} is not a valid URI: {exc}") from exc


async def open_connection(
    uri: str, options: ClientOptions, *, connection_class: type[Websocket] = Websocket
) -> Websocket:
    """Connect, following redirects, within ``open_timeout``; return an open websocket.

    Raises:
        ConnectError: one of its subclasses says what failed.
    """
    headers = options.headers
    loop = await running_loop()
    timeout = options.open_timeout
    try:
        async with timeout_at(loop, None if timeout is None else loop.time() + timeout):
            for _ in range(MAX_REDIRECTS + 1):
                ws_uri = _parse(uri)
                conn, location = await _attempt(ws_uri, options, headers, connection_class, loop)
                if conn is not None:
                    return conn
                assert location is not None
                target = _redirect_target(uri, location)
                new_uri = _parse(target)
                if ws_uri.secure and not new_uri.secure:
                    raise InvalidHandshake(
                        f"{_redact(uri)} redirected to {_redact(target)}: "
                        "refusing to leave wss:// for ws://"
                    )
                if (new_uri.secure, new_uri.host, new_uri.port) != (
                    ws_uri.secure,
                    ws_uri.host,
                    ws_uri.port,
                ):
                    # Another origin: the credentials stay behind, for good (and
                    # so does any userinfo the Location itself carries).
                    headers = [(k, v) for k, v in headers if k.lower() not in _CREDENTIAL_HEADERS]
                    target = _with_userinfo(target, "")
                elif new_uri.user_info is None:
                    target = _with_userinfo(target, _userinfo(uri))
                logger.debug("redirected from %s to %s", _redact(uri), _redact(target))
                uri = target
            raise InvalidHandshake(
                f"more than {MAX_REDIRECTS} redirects, the last to {_redact(uri)}"
            )
    except TimeoutError as exc:
        if isinstance(exc, ConnectError):
            raise
        raise HandshakeTimeout(
            f"could not open {_redact(uri)} within {options.open_timeout} s (open_timeout)"
        ) from exc


def _redirect_target(uri: str, location: str) -> str:
    """The ws:// or wss:// URI a redirect from ``uri`` to ``location`` leads to."""
    try:
        parts = urlsplit(urljoin(uri, location))
    except ValueError as exc:
        raise InvalidURI(f"{_redact(uri)} redirected to an invalid location: {exc}") from exc
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit(parts._replace(scheme=scheme))


def _userinfo(uri: str) -> str:
    """The userinfo of a URI (``user:password``), ``""`` if none."""
    netloc = urlsplit(uri).netloc
    return netloc.rpartition("@")[0]


def _with_userinfo(uri: str, userinfo: str) -> str:
    """``uri`` with ``userinfo`` (``""``: none) in place of its own."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}" if userinfo else host))


async def _attempt(
    ws_uri: WebSocketURI,
    options: ClientOptions,
    headers: list[tuple[str, str]],
    connection_class: type[Websocket],
    loop: asyncio.AbstractEventLoop,
) -> tuple[Websocket | None, str | None]:
    """One connection attempt: the open websocket, or a redirect's Location."""
    protocol = ClientProtocol(
        ws_uri,
        origin=options.origin,
        extensions=options.extensions,
        subprotocols=options.subprotocols,
        max_size=options.max_size,
        logger=_handshake_logger,
        state=CONNECTING,
    )
    conn = connection_class(protocol, options.settings, loop, conn_id=next(_client_ids))
    handshake = conn.expect_handshake()
    try:
        await _open_transport(conn, ws_uri, options, loop)
        request = protocol.connect()
        if options.user_agent is not None:
            request.headers["User-Agent"] = options.user_agent
        for name, value in headers:
            request.headers[name] = value
        protocol.send_request(request)
        if protocol.eof_sent:
            # The server closed before we wrote: its EOF was read while we
            # connected (uvloop does so) and our end of the stream is written;
            # nothing may follow it. The handshake fails as a closed connection.
            protocol.data_to_send()
        else:
            conn.flush()
        try:
            response: WSResponse = await shield(loop, handshake)
        except OSError as exc:  # the connection ended before a response came
            failure = protocol.handshake_exc
            raise _unanswered(ws_uri, failure) from failure or exc
    except BaseException:
        handshake.cancel()
        conn.abort()
        raise
    failure = protocol.handshake_exc
    if failure is None:
        conn.response = HTTPResponse(b"", 101, list(response.headers.raw_items()))
        conn.start_keepalive()
        return conn, None
    conn.abort()
    status = response.status_code if isinstance(response, WSResponse) else None
    if isinstance(failure, WSInvalidStatus) or (status is not None and status != 101):
        assert isinstance(response, WSResponse)
        location = response.headers.get("Location")
        if response.status_code in _REDIRECTS and location:
            return None, location
        answered = dict(response.headers.raw_items())
        raise InvalidStatus(response.status_code, answered, bytes(response.body)) from failure
    if isinstance(failure, WSInvalidHandshake):
        raise InvalidHandshake(
            f"the server's handshake response is invalid: {failure}"
        ) from failure
    raise InvalidHandshake(f"no valid handshake response: {failure}") from failure


def _unanswered(ws_uri: WebSocketURI, failure: Exception | None) -> ConnectError:
    """The error of a handshake whose connection ended before a valid response.

    An end of stream in the middle (or instead) of the response is a closed
    connection, worth retrying; anything else the server sent was no HTTP.
    """
    shown = _redact(_uri_of(ws_uri))
    detail = failure.__cause__ if isinstance(failure, InvalidMessage) else failure
    if detail is None or isinstance(detail, EOFError):
        # A TLS server closes a plain connection that way, without a word.
        hint = "" if ws_uri.secure else " (if it expects TLS, use wss://)"
        return ConnectError(
            f"{shown}: the server closed the connection during the opening handshake{hint}"
        )
    return InvalidHandshake(
        f"{shown}: the server's answer is not a valid HTTP/1.1 response: {detail}"
    )


def _uri_of(ws_uri: WebSocketURI) -> str:
    """The URI of a parsed URI, without userinfo."""
    host = build_host(ws_uri.host, ws_uri.port, ws_uri.secure)
    return f"{'wss' if ws_uri.secure else 'ws'}://{host}{ws_uri.resource_name}"


async def _open_transport(
    conn: Connection,
    ws_uri: WebSocketURI,
    options: ClientOptions,
    loop: asyncio.AbstractEventLoop,
) -> None:
    context = (
        options.ssl if options.ssl is not None else client_context() if ws_uri.secure else None
    )
    if context is not None and not ws_uri.secure:
        context = None  # ssl= applies to wss:// only
    proxy_url = _proxy_for(ws_uri, options.proxy)
    try:
        if not is_asyncio(loop):  # inside trio: anyio's streams
            if proxy_url is not None:
                raise ProxyError(
                    f"proxies ({_redact(proxy_url)}) are supported on asyncio only; "
                    "inside trio, pass proxy=None to connect directly"
                )
            from .trio_transport import connect_stream  # noqa: PLC0415 - trio is optional

            await connect_stream(cast(Any, loop), conn, ws_uri.host, ws_uri.port, context)
            return
        if proxy_url is None:
            await loop.create_connection(
                lambda: conn,
                ws_uri.host,
                ws_uri.port,
                ssl=context,
                server_hostname=ws_uri.host if context else None,
            )
            return
        try:
            proxy = parse_proxy(proxy_url)
        except InvalidProxy as exc:
            shown = _redact(proxy_url)
            exc.proxy, exc.args = shown, (shown, exc.msg)  # the cause shows it too
            raise ProxyError(f"invalid proxy {shown!r}: {exc.msg}") from exc
        if proxy.scheme.startswith("socks"):
            sock = await _socks_tunnel(proxy, ws_uri)
            await loop.create_connection(
                lambda: conn,
                sock=sock,
                ssl=context,
                server_hostname=ws_uri.host if context else None,
            )
            return
        transport = await _http_tunnel(proxy, ws_uri, options)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if context is None:
            transport.resume_reading()
        else:
            tls = await loop.start_tls(transport, conn, context, server_hostname=ws_uri.host)
            assert tls is not None
            conn.connection_made(tls)
    except ConnectError:
        raise
    except ssl_module.SSLCertVerificationError as exc:
        raise TLSError(
            f"TLS with {ws_uri.host} failed: certificate verify failed: {exc.verify_message}"
        ) from exc
    except ssl_module.SSLError as exc:
        raise TLSError(f"TLS with {ws_uri.host} failed: {exc.reason or exc}") from exc
    except socket.gaierror as exc:
        raise NameResolutionError(f"cannot resolve {ws_uri.host!r}: {exc.strerror}") from exc
    except ConnectionRefusedError as exc:
        raise ConnectionRefused(
            f"nothing accepts connections at {ws_uri.host}:{ws_uri.port} (connection refused)"
        ) from exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {ws_uri.host}:{ws_uri.port}: {exc}") from exc


def _proxy_for(ws_uri: WebSocketURI, proxy: str | bool | None) -> str | None:
    if proxy is True:
        # A proxy elsewhere cannot reach this machine's loopback, and a program
        # talking to a local server must not depend on the network's proxy.
        return None if is_loopback_name(ws_uri.host) else get_proxy(ws_uri)
    if proxy is False or proxy is None:
        return None
    return proxy


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT."""

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT)
        self.answered: asyncio.Future[h11.Response] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._parse()

    def eof_received(self) -> bool | None:
        self.h11.receive_data(b"")
        self._parse()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ProxyError("the proxy closed the connection"))

    def _parse(self) -> None:
        try:
            event = self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            if not self.answered.done():
                self.answered.set_exception(ProxyError(f"invalid answer from the proxy: {exc}"))
            return
        if isinstance(event, h11.Response) and not self.answered.done():
            self.answered.set_result(event)


async def _http_tunnel(
    proxy: Proxy, ws_uri: WebSocketURI, options: ClientOptions
) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    proxy_context = client_context() if proxy.scheme == "https" else None
    try:
        transport, tunnel = await loop.create_connection(
            _Tunnel,
            proxy.host,
            proxy.port,
            ssl=proxy_context,
            server_hostname=proxy.host if proxy_context else None,
        )
    except OSError as exc:
        raise ProxyError(f"cannot reach the proxy {proxy.host}:{proxy.port}: {exc}") from exc
    target = build_host(ws_uri.host, ws_uri.port, ws_uri.secure, always_include_port=True)
    headers = [("Host", target)]
    if options.user_agent is not None:
        headers.append(("User-Agent", options.user_agent))
    if proxy.user_info is not None:
        credentials = base64.b64encode(":".join(proxy.user_info).encode()).decode()
        headers.append(("Proxy-Authorization", f"Basic {credentials}"))
    request = h11.Request(method="CONNECT", target=target, headers=headers)
    transport.write(tunnel.h11.send(request) or b"")
    try:
        answer = await tunnel.answered
    except BaseException:
        transport.abort()
        raise
    if not 200 <= answer.status_code < 300:
        transport.abort()
        raise ProxyError(
            f"the proxy {proxy.host}:{proxy.port} refused to connect to {target}: "
            f"HTTP {answer.status_code} {answer.reason.decode('latin-1')}"
        )
    transport.pause_reading()
    return transport


async def _socks_tunnel(proxy: Proxy, ws_uri: WebSocketURI) -> socket.socket:
    try:
        # an optional dependency: the embedws[socks] extra
        from python_socks import ProxyError as SocksError  # noqa: PLC0415
        from python_socks import ProxyType  # noqa: PLC0415
        from python_socks.async_.asyncio import Proxy as SocksProxy  # noqa: PLC0415
    except ImportError as exc:
        raise ProxyError(
            "SOCKS proxies need the python-socks package: pip install 'embedws[socks]'"
        ) from exc
    # python-socks knows neither "socks5h" nor "socks4a" (names that ask for
    # the proxy to resolve the host); for the others, its defaults as before.
    kind, rdns = {
        "socks5h": (ProxyType.SOCKS5, True),
        "socks5": (ProxyType.SOCKS5, None),
        "socks4a": (ProxyType.SOCKS4, True),
        "socks4": (ProxyType.SOCKS4, None),
    }[proxy.scheme]
    socks = SocksProxy(kind, proxy.host, proxy.port, proxy.username, proxy.password, rdns)
    shown = (
        f"{proxy.scheme}://{build_host(proxy.host, proxy.port, False, always_include_port=True)}"
    )
    try:
        sock: socket.socket = await socks.connect(dest_host=ws_uri.host, dest_port=ws_uri.port)
    except SocksError as exc:
        raise ProxyError(f"the SOCKS proxy refused the connection: {exc}") from exc
    except OSError as exc:
        raise ProxyError(f"cannot use the SOCKS proxy {shown}: {exc}") from exc
    return sock


def _retryable(exc: Exception) -> bool:
    """Transient failures are retried when reconnecting; others are raised."""
    if isinstance(exc, InvalidStatus):
        return exc.status in (500, 502, 503, 504)
    if isinstance(exc, (InvalidURI, TLSError, InvalidHandshake)):
        return False
    return isinstance(exc, (OSError, TimeoutError))


class ConnectSpec:
    """What ``aio.connect`` and ``sync.connect`` share: the URI, the options and
    the retry policy of their reconnecting iteration."""

    def __init__(
        self,
        uri: str,
        *,
        reconnect_delays: Callable[[], Generator[float]] = backoff,
        **options: Any,
    ) -> None:
        _parse(uri)
        self.uri = uri
        self.options = ClientOptions(**options)
        self._reconnect_delays = reconnect_delays
        self._delays: Generator[float] | None = None

    def retry_delay(self, exc: Exception) -> float:
        """After a failed attempt: seconds to wait before the next one.

        Raises:
            Exception: ``exc`` itself, when it is not worth retrying.
        """
        if not _retryable(exc):
            raise exc
        if self._delays is None:
            self._delays = self._reconnect_delays()
        delay = next(self._delays)
        logger.info(
            "connecting to %s failed (%s); retrying in %.1f s", _redact(self.uri), exc, delay
        )
        return delay

    def connected(self) -> None:
        """After a successful attempt: the next failure starts the backoff again."""
        self._delays = None


class connect(ConnectSpec):  # noqa: N801 - used like a function, as websockets.connect is
    """Open a websocket client connection.

    ``ws = await connect(uri)``, ``async with connect(uri) as ws:``, or
    ``async for ws in connect(uri):`` to reconnect with exponential backoff
    whenever the connection drops (transient connection errors are retried,
    others raised).

    Thread contract: call and await it on one running event loop; the websocket
    it gives belongs to that loop (other threads use [`embedws.sync.connect`][]).

    Args:
        uri: ``ws://`` or ``wss://`` URI.
        subprotocols: subprotocols to offer, in order of preference.
        headers: extra HTTP headers for the handshake request.
        origin: the ``Origin`` header to send.
        open_timeout: seconds for TCP, proxy, TLS and the handshake together.
        ssl: the ``SSLContext`` for ``wss://`` (default: verify with certifi's CAs).
        compression: ``"deflate"`` (default) or ``None``.
        max_size: largest incoming message, in bytes (``None``: no limit).
        ping_interval, ping_timeout: keepalive; ``None`` disables.
        proxy: ``True`` reads ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``; a URL
            (``http://``, ``https://``, ``socks5h://``...) names one; ``None``: direct.
        reconnect_delays: for ``async for``: a callable returning the delays
            between attempts (default: exponential backoff).
    """

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri, **options)
        self._ws: Websocket | None = None

    def __await__(self) -> Generator[Any, None, Websocket]:
        return open_connection(self.uri, self.options).__await__()

    async def __aenter__(self) -> Websocket:
        self._ws = await open_connection(self.uri, self.options)
        return self._ws

    async def __aexit__(self, *exc_info: object) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def __aiter__(self) -> AsyncIterator[Websocket]:
        while True:
            try:
                ws = await open_connection(self.uri, self.options)
            except Exception as exc:
                await sleep(await running_loop(), self.retry_delay(exc))
                continue
            self.connected()
            try:
                yield ws
            finally:
                await ws.close()
