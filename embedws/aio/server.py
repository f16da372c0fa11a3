"""The async server: ``embedws.aio.serve(app, host, port)`` on the running loop.

Theory of operation
-------------------
`Server` owns the listening sockets, the set of sockets still speaking
HTTP (`HTTPConnection`) and the set of open websockets
([`Connection`][embedws.aio.Connection]). It sees the application only
through `ServedApp` (routes, config, middleware, listeners, runners).
It accepts through an `Acceptor`, which, when the
process runs out of descriptors, has `Server.close_idle_http()` make room.

Start order: ``before_server_start`` listeners; the app's scale-out broker
(``embedws/aio/broker.py``), if any, attaches (the first server starts it);
listen; ``after_server_start`` listeners.

Shutdown order (``close()``): ``before_server_stop`` listeners; stop accepting;
close idle HTTP connections; send close 1001 to every websocket; wait until the
connections are gone and the handlers have returned, at most
``GRACEFUL_SHUTDOWN_TIMEOUT``; abort what remains and give up on handlers still
running (logged); the broker detaches (the last server stops it: unsubscribed,
its connections and tasks gone); ``after_server_stop`` listeners.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import inspect
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.protocol import OPEN
from websockets.typing import Subprotocol

from ..config import Config
from ..handshake import subprotocol_selector
from ..protocol import ServerProtocol
from ..request import Request
from ..response import HTTPResponse
from ..routing import Route, Router
from ..security import is_loopback_address, rebinding_guard_warning
from ..tls import SSLArg, server_context
from .acceptor import AcceptBackoff, Acceptor, IdleSince
from .broker import RedisBroker
from .connection import Connection, Settings, protocol_logger, read_buffer_for
from .crossing import LoopClosed, crossing_for
from .http import HTTPConnection
from .runner import HandlerRunner, HookRunner, is_async_callable
from .runtime import is_asyncio, shield, timeout_at, wait_uncancellable

__all__ = ["Listening", "ServedApp", "Server", "serve"]

logger = logging.getLogger("embedws.server")

_R = TypeVar("_R")

_SAME_PORT_ATTEMPTS = 5  # binds of a host list on one free port, before giving up


class ServedApp(Protocol):
    """What the core needs of an application (``embedws.App`` provides it)."""

    name: str
    router: Router
    config: Config
    error_format: str | None

    @property
    def broker(self) -> RedisBroker | None: ...
    @property
    def request_middleware(self) -> Sequence[Callable[..., Any]]: ...
    @property
    def response_middleware(self) -> Sequence[Callable[..., Any]]: ...
    def listeners_for(self, event: str) -> Sequence[Callable[..., Any]]: ...
    def handler_runners(
        self, loop: asyncio.AbstractEventLoop, config: Config
    ) -> Mapping[str, HandlerRunner]: ...
    def hook_runner(self, loop: asyncio.AbstractEventLoop, config: Config) -> HookRunner: ...
    def server_started(self, server: Server) -> None: ...
    def server_stopped(self, server: Server) -> None: ...
    def next_connection_id(self) -> int: ...
    def connection_opened(self, conn: Connection) -> None: ...
    def connection_closed(self, conn: Connection) -> None: ...


class Listening(Protocol):
    """What accepts on listening sockets (an ``Acceptor``, or its trio counterpart)."""

    @property
    def sockets(self) -> Sequence[socket.socket]: ...
    @property
    def pending(self) -> int: ...
    def handshakes(self) -> list[tuple[IdleSince, Callable[[], object]]]: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


class _Hook:
    """A middleware or listener, and where it runs: ``async def`` on the loop, ``def`` off it."""

    __slots__ = ("fn", "on_loop")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.on_loop = is_async_callable(fn)


class Server:
    """A running server. Thread contract: use it on its event loop only.

    Attributes:
        config: the configuration this server runs with.
    """

    def __init__(self, app: ServedApp, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.config = config
        self.loop = loop
        self.router = app.router
        self.error_format = app.error_format
        self.settings = Settings(
            close_timeout=config.WEBSOCKET_TIMEOUT,
            ping_interval=config.WEBSOCKET_PING_INTERVAL,
            ping_timeout=config.WEBSOCKET_PING_TIMEOUT,
            max_queue=config.WEBSOCKET_MAX_QUEUE,
            write_timeout=config.WEBSOCKET_WRITE_TIMEOUT,
            max_backlog=config.WEBSOCKET_MAX_BACKLOG,
        )
        self.read_buffer = read_buffer_for(loop)
        self.tls = False
        self.loopback_only = True
        self.named_hosts: frozenset[str] = frozenset()
        self.closing = False
        self._runners: Mapping[str, HandlerRunner] = {}
        self._hooks: HookRunner | None = None
        self._request_middleware = [_Hook(fn) for fn in app.request_middleware]
        self._response_middleware = [_Hook(fn) for fn in app.response_middleware]
        # One per asyncio.Server (an Acceptor) or, inside trio, per listening socket.
        self._servers: list[Listening] = []
        self._backoff = AcceptBackoff(loop, self)
        self._http: set[HTTPConnection] = set()
        self._websockets: set[Connection] = set()
        self._extensions = (
            enable_server_permessage_deflate(None)
            if config.WEBSOCKET_COMPRESSION == "deflate"
            else None
        )
        self._selectors: dict[
            Route, Callable[[Any, Sequence[Subprotocol]], Subprotocol | None]
        ] = {}
        self._emptied: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = loop.create_future()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._unix: str | None = None
        self._broker: RedisBroker | None = None  # attached: detach it at shutdown

    # Starting -------------------------------------------------------------------

    async def start(
        self,
        host: str | Sequence[str] | None,
        port: int,
        *,
        ssl: SSLArg = None,
        sock: socket.socket | None = None,
        unix: str | None = None,
    ) -> None:
        context = server_context(ssl)
        self.tls = context is not None
        self.named_hosts = self.router.named_hosts()
        self._runners = self.app.handler_runners(self.loop, self.config)
        self._hooks = self.app.hook_runner(self.loop, self.config)
        await self._run_listeners("before_server_start", raise_errors=True)
        broker = self.app.broker
        if broker is not None:
            if not is_asyncio(self.loop):
                raise RuntimeError(
                    "the Redis broker runs on asyncio (redis-py's asyncio client): "
                    "serve this app with asyncio, or without a broker inside trio"
                )
            # Before listening: no member can join a room the broker does not know of.
            await broker.attach()
            self._broker = broker
        if unix is not None:
            self._unix = unix
        self._servers.extend(await self._listen(host, port, context, sock, unix))
        self.loopback_only = all(_is_loopback_socket(s) for s in self.sockets)
        warning = rebinding_guard_warning(
            [str(name[0]) for s in self.sockets if isinstance(name := s.getsockname(), tuple)],
            self.config.ALLOWED_HOSTS,
        )
        if warning is not None:
            logger.warning("%s", warning)
        self.app.server_started(self)
        await self._run_listeners("after_server_start", raise_errors=True)

    async def _listen(
        self,
        host: str | Sequence[str] | None,
        port: int,
        context: ssl_module.SSLContext | None,
        sock: socket.socket | None,
        unix: str | None,
    ) -> list[Listening]:
        """Listen (the part of starting that differs between runtimes)."""
        options: dict[str, Any] = {
            "ssl": context,
            "ssl_handshake_timeout": self.config.WEBSOCKET_TIMEOUT if context else None,
            "start_serving": False,  # an Acceptor accepts (see embedws/aio/acceptor.py)
        }
        factory = self._make_http_connection
        if unix is not None:
            servers = [await self.loop.create_unix_server(factory, unix, **options)]
        elif sock is not None:
            servers = [await self.loop.create_server(factory, sock=sock, **options)]
        else:
            servers = await self._listen_tcp(host, port, options)
        return [self._acceptor(server, factory, options) for server in servers]

    async def _listen_tcp(
        self, host: str | Sequence[str] | None, port: int, options: dict[str, Any]
    ) -> list[asyncio.Server]:
        """Listen on every address of ``host``, all on one port.

        asyncio binds each address with the port it is given: with port 0,
        each would get a port of its own (``["127.0.0.1", "::1"]``, or a name
        that resolves to both), and ``server.port`` would reach only the
        first. So with port 0 the first address picks the port and the others
        take it; if one of them cannot (another program holds that port on
        that address), all of them try again with a new one.
        """
        factory = self._make_http_connection
        if port != 0:
            return [
                await self.loop.create_server(factory, host, port, reuse_address=True, **options)
            ]
        addresses = await self._resolve(host)
        if len(addresses) <= 1:
            return [await self.loop.create_server(factory, host, 0, reuse_address=True, **options)]
        for attempt in range(_SAME_PORT_ATTEMPTS):
            first = await self.loop.create_server(
                factory, addresses[0], 0, reuse_address=True, **options
            )
            chosen = first.sockets[0].getsockname()[1]
            try:
                rest = await self.loop.create_server(
                    factory, addresses[1:], chosen, reuse_address=True, **options
                )
            except OSError as exc:
                first.close()
                await first.wait_closed()
                if exc.errno != errno.EADDRINUSE or attempt == _SAME_PORT_ATTEMPTS - 1:
                    raise
                continue
            return [first, rest]
        raise AssertionError("unreachable")  # pragma: no cover

    async def _resolve(self, host: str | Sequence[str] | None) -> list[str]:
        """The distinct addresses ``host`` (a name, an address, a list, or None) stands for."""
        hosts = [host] if host is None or isinstance(host, str) else list(host)
        addresses: list[str] = []
        for name in hosts:
            infos = await self.loop.getaddrinfo(
                name, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            for family, _type, _proto, _canon, sockaddr in infos:
                address = str(sockaddr[0])
                if family == socket.AF_INET6 and len(sockaddr) > 3 and sockaddr[3]:
                    address = f"{address}%{sockaddr[3]}"  # a link-local address's scope
                if address not in addresses:
                    addresses.append(address)
        return addresses

    def _make_http_connection(self) -> HTTPConnection:
        return HTTPConnection(self)

    def _acceptor(
        self,
        server: asyncio.Server,
        factory: Callable[[], HTTPConnection],
        options: Mapping[str, Any],
    ) -> Acceptor:
        return Acceptor(
            server,
            factory,
            self._backoff,
            ssl=options["ssl"],
            ssl_handshake_timeout=options["ssl_handshake_timeout"],
        )

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets."""
        return [s for server in self._servers for s in server.sockets]

    @property
    def port(self) -> int:
        """The port of the first listening socket (0 for a Unix socket)."""
        for sock in self.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                return int(name[1])
        return 0

    @property
    def urls(self) -> list[str]:
        """``ws://host:port`` of every listening socket (``wss://`` with TLS)."""
        scheme = "wss" if self.tls else "ws"
        if self._unix is not None:
            return [f"{scheme}+unix://{self._unix}"]
        urls = []
        for sock in self.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                host = str(name[0])
                urls.append(
                    f"{scheme}://[{host}]:{name[1]}"
                    if ":" in host
                    else f"{scheme}://{host}:{name[1]}"
                )
        return urls

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS) of the first listening socket."""
        scheme = "wss" if self.tls else "ws"
        if self._unix is not None:
            return f"{scheme}+unix://{self._unix}"
        for sock in self.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                host = str(name[0])
                if ":" in host:
                    host = f"[{host}]"
                return f"{scheme}://{host}:{name[1]}"
        return f"{scheme}://localhost"

    # Used by the HTTP front ---------------------------------------------------

    def track_http(self, conn: HTTPConnection) -> bool:
        if self.closing:
            return False
        self._http.add(conn)
        return True

    def untrack_http(self, conn: HTTPConnection) -> None:
        self._http.discard(conn)
        self._maybe_emptied()

    def connection_count(self) -> int:
        return len(self._http) + len(self._websockets)

    def open_connection_count(self) -> int:
        """Every connection holding a descriptor, TLS handshakes included."""
        return self.connection_count() + sum(acceptor.pending for acceptor in self._servers)

    def close_idle_http(self, count: int) -> int:
        """Close up to ``count`` idle HTTP connections to free their descriptors.

        Those idle longest go first. Idle means waiting for a request with
        nothing in flight either way: a connection that has not sent a byte
        yet (TLS handshakes in progress included), or a keep-alive one between
        requests; never one in the middle of a request, never a websocket.
        Used when ``accept()`` runs out of descriptors (``embedws/aio/acceptor.py``).

        Returns:
            How many were closed.
        """
        idle: list[tuple[IdleSince, Callable[[], object]]] = [
            (since, conn.abort) for conn in self._http if (since := conn.idle_since()) is not None
        ]
        for acceptor in self._servers:
            idle.extend(acceptor.handshakes())
        oldest = heapq.nsmallest(count, idle, key=lambda pair: pair[0])
        for _since, close in oldest:
            close()
        return len(oldest)

    def runner_for(self, route: Route) -> HandlerRunner:
        if route.is_async:
            return self._runners["async"]
        return self._runners[route.mode or self.config.SYNC_HANDLER_MODE]

    def over_capacity(self, route: Route) -> bool:
        """Past ``MAX_CONNECTIONS``, or no handler slot left for this route."""
        return (
            self.connection_count() > self.config.MAX_CONNECTIONS
            or not self.runner_for(route).has_capacity()
        )

    def make_protocol(self, route: Route) -> ServerProtocol:
        selector = None
        if route.subprotocols:  # else the stock rule already answers "none"
            selector = self._selectors.get(route)
            if selector is None:
                selector = self._selectors[route] = subprotocol_selector(route.subprotocols)
        return ServerProtocol(
            subprotocols=[Subprotocol(p) for p in route.subprotocols]
            if route.subprotocols
            else None,
            select_subprotocol=selector,
            extensions=self._extensions,
            max_size=self.config.WEBSOCKET_MAX_SIZE,
            logger=protocol_logger,
            state=OPEN,
        )

    def accept_websocket(
        self,
        transport: asyncio.Transport,
        protocol: ServerProtocol,
        request: Request,
        route: Route,
        params: dict[str, Any],
        head: bytes,
        trailing: bytes,
    ) -> Connection:
        """Turn an upgraded socket into a websocket and start its handler."""
        runner = self.runner_for(route)
        conn = runner.connection_class(
            protocol,
            self.settings,
            self.loop,
            request=request,
            route=route,
            conn_id=self.app.next_connection_id(),
            on_close=self._websocket_closed,
        )
        self._websockets.add(conn)
        # The runner installs its consumer before any byte is fed to the connection.
        runner.start(conn, request, route.handler, params)
        self.app.connection_opened(conn)
        conn.attach(transport, head, trailing)
        return conn

    def _websocket_closed(self, conn: Connection) -> None:
        self._websockets.discard(conn)
        try:
            self.app.connection_closed(conn)
        finally:
            self._maybe_emptied()

    def _maybe_emptied(self) -> None:
        emptied = self._emptied
        if emptied is not None and not emptied.done() and not self._websockets and not self._http:
            emptied.set_result(None)

    async def run_blocking(self, fn: Callable[..., _R], *args: Any) -> _R:
        """Run ``fn(*args)`` (file I/O) on a hook thread, off the loop; its result."""
        assert self._hooks is not None
        result: _R = await self._hooks.call(fn, *args, reserved=True)
        return result

    async def _call_hook(self, hook: _Hook, *args: Any, reserved: bool = False) -> Any:
        """Run a middleware or listener where it belongs; its result."""
        if hook.on_loop:
            result = hook.fn(*args)
        else:
            assert self._hooks is not None
            result = await self._hooks.call(hook.fn, *args, reserved=reserved)
        if inspect.isawaitable(result):  # a def that returned a coroutine
            result = await result
        return result

    @property
    def has_middleware(self) -> bool:
        """Whether any ``on_request`` or ``on_response`` middleware runs."""
        return bool(self._request_middleware or self._response_middleware)

    async def run_request_middleware(self, request: Request) -> HTTPResponse | None:
        for middleware in self._request_middleware:
            result = await self._call_hook(middleware, request)
            if result is not None:
                if not isinstance(result, HTTPResponse):
                    raise TypeError(
                        f"on_request middleware {_name(middleware.fn)} returned "
                        f"{type(result).__name__}, not an HTTPResponse or None"
                    )
                return result
        return None

    async def run_response_middleware(
        self, request: Request, response: HTTPResponse
    ) -> HTTPResponse:
        for middleware in self._response_middleware:
            result = await self._call_hook(middleware, request, response)
            if isinstance(result, HTTPResponse) and response.status != 101:
                response = result
        return response

    async def _run_listeners(self, event: str, *, raise_errors: bool = False) -> None:
        for listener in self.app.listeners_for(event):
            try:
                await self._call_hook(_Hook(listener), self.app, reserved=True)
            except Exception:
                if raise_errors:
                    raise
                logger.error("%s listener %s raised", event, _name(listener), exc_info=True)

    # Stopping -------------------------------------------------------------------

    def close(self) -> None:
        """Start the graceful shutdown (idempotent); ``wait_closed`` waits for it."""
        if self._shutdown_task is None:
            self._shutdown_task = self.loop.create_task(self._shutdown())

    def close_threadsafe(self) -> None:
        """`close()` from any thread."""
        try:
            crossing_for(self.loop).call(self.close)
        except LoopClosed:  # so is the server
            pass

    async def wait_closed(self) -> None:
        """Wait until the shutdown is complete."""
        await shield(self.loop, self._closed)

    async def serve_forever(self) -> None:
        """Serve until ``close()`` is called; closes the server if cancelled."""
        try:
            await self.wait_closed()
        except BaseException:  # cancelled (asyncio.CancelledError, trio.Cancelled)
            self.close()
            await wait_uncancellable(self.loop, self._closed)
            raise

    async def _shutdown(self) -> None:
        try:
            await self._run_listeners("before_server_stop")
            self.closing = True
            for server in self._servers:
                server.close()
            deadline = self.loop.time() + self.config.GRACEFUL_SHUTDOWN_TIMEOUT
            for http in list(self._http):
                http.close_if_idle()
            for conn in list(self._websockets):
                conn.start_close(1001, "server shutting down")
            if self._websockets or self._http:
                self._emptied = self.loop.create_future()
                try:
                    async with timeout_at(self.loop, deadline):
                        await self._emptied
                except TimeoutError:
                    logger.warning(
                        "%d connections still open after the graceful shutdown timeout; aborting",
                        len(self._websockets) + len(self._http),
                    )
            for conn in list(self._websockets):
                conn.abort()
            for http in list(self._http):
                if http.transport is not None:
                    http.transport.abort()
            for runner in self._runners.values():
                await runner.shutdown(deadline)
            for server in self._servers:
                await server.wait_closed()
            broker, self._broker = self._broker, None
            if broker is not None:
                try:
                    await broker.detach()
                except Exception:
                    logger.exception("stopping the broker failed")
            await self._run_listeners("after_server_stop")
        finally:
            if self._hooks is not None:
                self._hooks.close()
            self.app.server_stopped(self)
            if not self._closed.done():
                self._closed.set_result(None)

    def join_handlers(self, timeout: float) -> None:
        """Join handler threads (blocking: call it off the loop, after shutdown)."""
        for runner in self._runners.values():
            runner.join(timeout)
        if self._hooks is not None:
            self._hooks.join(timeout)

    def __repr__(self) -> str:
        return f"<Server {self.url}>"


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", repr(fn)))


def _is_loopback_socket(sock: socket.socket) -> bool:
    if sock.family == getattr(socket, "AF_UNIX", None):
        return True
    name = sock.getsockname()
    return isinstance(name, tuple) and is_loopback_address(str(name[0]))


class serve:  # noqa: N801 - used like a function, as websockets.serve is
    """Serve ``app`` on the running loop: ``async with serve(app, host, port) as server``.

    Also awaitable on asyncio: ``server = await serve(app, ...)``; then
    ``server.close()`` and ``await server.wait_closed()``.

    Inside trio (``embedws[trio]``), ``async with`` only: the server's tasks live
    in a nursery that the ``async with`` block owns; leaving it, or being
    cancelled, closes every websocket with 1001 and waits for the handlers, at
    most ``GRACEFUL_SHUTDOWN_TIMEOUT``. Greenlet mode is asyncio-only.

    Thread contract: call it on the running event loop that is to serve; the
    server it gives belongs to that loop (other threads use ``app.broadcast``
    and rooms, or ``app.start()`` for a server on a loop thread of its own).

    Args:
        app: the application.
        host: address or list of addresses to listen on (default loopback).
        port: the port; 0 picks a free one (see ``server.port``).
        ssl: an ``SSLContext`` or ``{"cert": ..., "key": ...}``.
        sock: an already bound socket to serve on.
        unix: a Unix socket path to serve on.
        **config: configuration values for this server only.
    """

    def __init__(
        self,
        app: ServedApp,
        host: str | Sequence[str] | None = "127.0.0.1",
        port: int = 0,
        *,
        ssl: ssl_module.SSLContext | Mapping[str, Any] | None = None,
        sock: socket.socket | None = None,
        unix: str | None = None,
        **config: Any,
    ) -> None:
        self._app = app
        self._config = app.config.copy(**config)
        self._host, self._port = host, port
        self._ssl, self._sock, self._unix = ssl, sock, unix
        self._server: Server | None = None
        self._trio: Any = None  # the trio serving, inside trio

    async def start(self) -> Server:
        """Start serving and return the server (what ``await serve(...)`` does)."""
        loop = _running_asyncio_loop()
        if loop is None:
            raise RuntimeError(
                "await serve(...) needs asyncio; inside trio, use async with serve(...)"
            )
        server = Server(self._app, self._config, loop)
        try:
            await server.start(
                self._host, self._port, ssl=self._ssl, sock=self._sock, unix=self._unix
            )
        except BaseException:
            server.close()
            await server.wait_closed()
            raise
        self._server = server
        return server

    def __await__(self) -> Generator[Any, None, Server]:
        return self.start().__await__()

    async def __aenter__(self) -> Server:
        if _running_asyncio_loop() is not None:
            return await self.start()
        try:
            from .trio_server import TrioServing  # noqa: PLC0415 - only inside trio
        except ImportError:
            raise RuntimeError(
                "embedws.aio.serve needs a running asyncio loop, or trio with the "
                "embedws[trio] extra installed"
            ) from None

        self._trio = TrioServing(
            self._app,
            self._config,
            self._host,
            self._port,
            ssl=self._ssl,
            sock=self._sock,
            unix=self._unix,
        )
        server: Server = await self._trio.__aenter__()
        self._server = server
        return server

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._trio is not None:
            await self._trio.__aexit__(*exc_info)
            return
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; None in another runtime (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
