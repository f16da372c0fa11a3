"""``embedws.App``: the composition root of routes, config, middleware and listeners.

The app holds what to serve; ``start``/``serve``/``run`` hand it to the sync
facade, which runs the async core on the background loop thread;
``embedws.aio.serve(app, ...)`` runs the same core on the caller's loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, TypeVar

from .aio.broker import RedisBroker
from .aio.connection import Connection
from .aio.registry import Connections, Registry, Room
from .aio.runner import AsyncRunner, HandlerRunner, HookRunner
from .aio.server import Server as AsyncServer
from .config import Config
from .errors import RouteError
from .routing import Route, RouteKind, Router, hosts_tuple, make_uri
from .static import StaticFiles
from .sync.runner import GreenletRunner, ThreadHookRunner, ThreadRunner
from .sync.server import Server, start
from .sync.server import run as run_server
from .tls import SSLArg

__all__ = ["App", "Blueprint"]

_F = TypeVar("_F", bound=Callable[..., Any])

LISTENER_EVENTS = (
    "before_server_start",
    "after_server_start",
    "before_server_stop",
    "after_server_stop",
)
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")


class _RouteTable:
    """Route registration shared by `App` and `Blueprint`."""

    def _register(
        self, kind: RouteKind, handler: Callable[..., Any], uri: str, **options: Any
    ) -> Any:
        raise NotImplementedError

    def websocket(
        self,
        uri: str,
        host: str | Sequence[str] | None = None,
        strict_slashes: bool | None = None,
        subprotocols: Sequence[str] | None = None,
        name: str | None = None,
        apply: Sequence[Callable[..., Any]] | None = None,
        version: int | str | float | None = None,
        version_prefix: str = "/v",
        error_format: str | None = None,
        mode: str | None = None,
    ) -> Callable[[_F], _F]:
        """Decorate a websocket handler ``(request, ws, **params)``, sync or async.

        Args:
            uri: the path, with parameters such as ``<room>`` or ``<id:int>``.
            host: only serve requests whose Host is this one (or one of these).
            strict_slashes: when false, ``/ws`` and ``/ws/`` both match.
            subprotocols: subprotocols the server speaks, in preference order.
            name: the name for ``url_for`` (default: the handler's name).
            apply: decorators applied to the handler, in order.
            version: serve under ``/v<version>`` (``version_prefix`` replaces ``/v``).
            error_format: ``"json"``, ``"html"`` or ``"text"`` for HTTP error bodies.
            mode: ``"thread"`` or ``"greenlet"`` for a sync handler.
        """

        def decorator(handler: _F) -> _F:
            self.add_websocket_route(
                handler,
                uri,
                host=host,
                strict_slashes=strict_slashes,
                subprotocols=subprotocols,
                name=name,
                apply=apply,
                version=version,
                version_prefix=version_prefix,
                error_format=error_format,
                mode=mode,
            )
            return handler

        return decorator

    def add_websocket_route(self, handler: Callable[..., Any], uri: str, **options: Any) -> Any:
        """Register a websocket handler; the options are those of `websocket()`."""
        return self._register("websocket", handler, uri, **options)

    def route(
        self,
        uri: str,
        methods: Sequence[str] = ("GET",),
        host: str | Sequence[str] | None = None,
        strict_slashes: bool | None = None,
        name: str | None = None,
        apply: Sequence[Callable[..., Any]] | None = None,
        version: int | str | float | None = None,
        version_prefix: str = "/v",
        error_format: str | None = None,
        mode: str | None = None,
    ) -> Callable[[_F], _F]:
        """Decorate an HTTP handler ``(request, **params)`` returning an ``HTTPResponse``.

        Sync handlers run off the event loop (on the handler pool, or in a
        greenlet in greenlet mode); async ones on the loop.
        """

        def decorator(handler: _F) -> _F:
            self.add_route(
                handler,
                uri,
                methods=methods,
                host=host,
                strict_slashes=strict_slashes,
                name=name,
                apply=apply,
                version=version,
                version_prefix=version_prefix,
                error_format=error_format,
                mode=mode,
            )
            return handler

        return decorator

    def add_route(
        self,
        handler: Callable[..., Any],
        uri: str,
        methods: Sequence[str] = ("GET",),
        **options: Any,
    ) -> Any:
        """Register an HTTP handler; the options are those of `route()`."""
        return self._register("http", handler, uri, methods=methods, **options)

    def static(
        self,
        uri: str,
        file_or_directory: str | os.PathLike[str],
        *,
        name: str = "static",
        index: str | None = "index.html",
        follow_external_symlinks: bool = False,
        cache_control: str | None = "no-cache",
        content_type: str | None = None,
        host: str | Sequence[str] | None = None,
        strict_slashes: bool | None = None,
        version: int | str | float | None = None,
        version_prefix: str = "/v",
    ) -> None:
        """Serve a folder (or one file) under ``uri``: a web UI's pages, scripts, images.

        ``GET uri/<path>`` serves the file at ``path`` inside the folder, and
        ``GET uri/`` its ``index``; anything that would leave the folder
        (``..``, backslashes, absolute paths, symlinks pointing outside unless
        ``follow_external_symlinks``) gets 404 with no detail. Files are
        streamed with ``ETag``, ``Last-Modified``, 304 and ``Range`` answers;
        ``cache_control`` is their ``Cache-Control`` (default ``"no-cache"``:
        browsers revalidate, so a changed file shows at once). ``HEAD`` works.
        ``url_for(name, path="app.js")`` builds a file's URL.

        Raises:
            FileNotFoundError: ``file_or_directory`` does not exist.
        """
        handler = StaticFiles(
            file_or_directory,
            index=index,
            follow_external_symlinks=follow_external_symlinks,
            cache_control=cache_control,
            content_type=content_type,
        )
        options: dict[str, Any] = {
            "methods": ("GET",),
            "host": host,
            "strict_slashes": strict_slashes,
            "name": name,
            "version": version,
            "version_prefix": version_prefix,
        }
        if handler.is_file:
            self._register("http", handler, uri, **options)
            return
        base = uri.rstrip("/")
        # The parameter route first: url_for(name, path=...) builds a file's URL.
        self._register("http", handler, base + "/<path:path>", **options)
        self._register("http", handler, base or "/", **options)

    def get(self, uri: str, **options: Any) -> Callable[[_F], _F]:
        """`route()` for GET (and HEAD)."""
        return self.route(uri, methods=("GET",), **options)

    def post(self, uri: str, **options: Any) -> Callable[[_F], _F]:
        """`route()` for POST."""
        return self.route(uri, methods=("POST",), **options)

    def put(self, uri: str, **options: Any) -> Callable[[_F], _F]:
        """`route()` for PUT."""
        return self.route(uri, methods=("PUT",), **options)

    def delete(self, uri: str, **options: Any) -> Callable[[_F], _F]:
        """`route()` for DELETE."""
        return self.route(uri, methods=("DELETE",), **options)

    def patch(self, uri: str, **options: Any) -> Callable[[_F], _F]:
        """`route()` for PATCH."""
        return self.route(uri, methods=("PATCH",), **options)


class Blueprint(_RouteTable):
    """A group of routes under a URL prefix, added to an app with ``app.blueprint(bp)``.

    Route names become ``"<blueprint name>.<route name>"``.
    Thread contract: build it before serving.
    """

    def __init__(
        self,
        name: str,
        url_prefix: str | None = None,
        *,
        host: str | Sequence[str] | None = None,
        version: int | str | float | None = None,
        strict_slashes: bool | None = None,
    ) -> None:
        self.name = name
        self.url_prefix = url_prefix or ""
        self.host = host
        self.version = version
        self.strict_slashes = strict_slashes
        self._deferred: list[tuple[RouteKind, Callable[..., Any], str, dict[str, Any]]] = []

    def _register(
        self, kind: RouteKind, handler: Callable[..., Any], uri: str, **options: Any
    ) -> None:
        self._deferred.append((kind, handler, uri, options))

    def register(self, app: App) -> None:
        for kind, handler, uri, registered in self._deferred:
            options = dict(registered)
            if options.get("host") is None:
                options["host"] = self.host
            if options.get("version") is None:
                options["version"] = self.version
            if options.get("strict_slashes") is None:
                options["strict_slashes"] = self.strict_slashes
            options["name"] = f"{self.name}.{options.get('name') or handler.__name__}"
            app._add_route(kind, handler, uri, prefix=self.url_prefix, **options)


class App(_RouteTable):
    """A set of websocket and HTTP routes, and how to serve them.

    Thread contract: register routes, middleware and listeners before serving;
    ``start``/``serve``/``run``/``stop``, ``url_for`` and ``config`` reads are
    safe from any thread.
    """

    def __init__(
        self,
        name: str = "embedws",
        *,
        config: Mapping[str, Any] | None = None,
        strict_slashes: bool = False,
        error_format: str | None = None,
        broker: RedisBroker | None = None,
    ) -> None:
        self.name = name
        self.config = Config(config)
        self.router = Router()
        self.strict_slashes = strict_slashes
        self.error_format = error_format
        self.ctx = SimpleNamespace()
        self._request_middleware: list[Callable[..., Any]] = []
        self._response_middleware: list[Callable[..., Any]] = []
        self._listeners: dict[str, list[Callable[..., Any]]] = {e: [] for e in LISTENER_EVENTS}
        self._ids = itertools.count(1)
        self._registry = Registry()
        self.connections = Connections(self._registry)
        """Live view of the open websockets (``len``, iteration, ``get(id)``, ``by_route``)."""
        self._broker = broker
        if broker is not None:
            broker.bind(self._registry)
        # Every running server of this app (started by start/run or aio.serve),
        # with its sync handle when it has one.
        self._running: dict[AsyncServer, Server | None] = {}
        self._running_lock = threading.Lock()  # guards _running

    # Routes -------------------------------------------------------------------

    def _register(
        self, kind: RouteKind, handler: Callable[..., Any], uri: str, **options: Any
    ) -> Any:
        return self._add_route(kind, handler, uri, **options)

    def _add_route(
        self,
        kind: RouteKind,
        handler: Callable[..., Any],
        uri: str,
        *,
        prefix: str = "",
        methods: Sequence[str] = ("GET",),
        host: str | Sequence[str] | None = None,
        strict_slashes: bool | None = None,
        subprotocols: Sequence[str] | None = None,
        name: str | None = None,
        apply: Sequence[Callable[..., Any]] | None = None,
        version: int | str | float | None = None,
        version_prefix: str = "/v",
        error_format: str | None = None,
        mode: str | None = None,
    ) -> Route:
        if not callable(handler):
            raise RouteError(f"the handler for {uri!r} is not callable")
        if mode not in (None, "thread", "greenlet"):
            raise RouteError(f"mode must be 'thread' or 'greenlet', not {mode!r}")
        if error_format not in (None, "json", "html", "text"):
            raise RouteError(f"error_format must be 'json', 'html' or 'text', not {error_format!r}")
        original = handler
        for decorator in apply or ():
            handler = decorator(handler)
        upper = frozenset(m.upper() for m in methods)
        unknown = upper - set(HTTP_METHODS)
        if unknown:
            raise RouteError(f"unknown HTTP methods {sorted(unknown)} for {uri!r}")
        route = Route(
            kind=kind,
            uri=make_uri(uri, prefix=prefix, version=version, version_prefix=version_prefix),
            handler=handler,
            name=name or str(getattr(original, "__name__", "handler")),
            methods=frozenset({"GET"}) if kind == "websocket" else upper,
            hosts=hosts_tuple(host),
            strict_slashes=self.strict_slashes if strict_slashes is None else strict_slashes,
            subprotocols=tuple(subprotocols) if subprotocols else None,
            error_format=error_format,
            mode=mode,
        )
        return self.router.add(route)

    def blueprint(self, blueprint: Blueprint) -> None:
        """Add the routes of ``blueprint``."""
        blueprint.register(self)

    def url_for(self, name: str, **params: Any) -> str:
        """The path of the route named ``name``; extra params become the query string.

        Raises:
            RouteError: no such route, or a path parameter is missing.
        """
        return self.router.named(name).build(params)

    # Middleware and listeners --------------------------------------------------

    def on_request(self, middleware: _F) -> _F:
        """Run ``middleware(request)`` before each handler and handshake.

        Returning an ``HTTPResponse`` answers with it (a refused handshake);
        what it puts on ``request.ctx`` reaches the handler. A ``def``
        middleware may block (a database lookup): it runs on a thread of its
        own, off the event loop; an ``async def`` one runs on the loop.
        """
        self._request_middleware.append(middleware)
        return middleware

    def on_response(self, middleware: _F) -> _F:
        """Run ``middleware(request, response)`` on every HTTP response and on the 101.

        As with `on_request()`, a ``def`` middleware runs off the event loop.
        """
        self._response_middleware.append(middleware)
        return middleware

    def middleware(self, kind: str = "request") -> Callable[[_F], _F]:
        """``@app.middleware("request")`` / ``("response")``, as in Sanic."""
        if kind not in ("request", "response"):
            raise ValueError("middleware kind must be 'request' or 'response'")
        return self.on_request if kind == "request" else self.on_response

    def listener(self, event: str) -> Callable[[_F], _F]:
        """Decorate ``listener(app)`` for one of the four server events.

        A ``def`` listener may block: it runs off the event loop, so it delays
        only the ``start``/``stop`` call that runs it, never serving; an
        ``async def`` one runs on the loop.
        """
        if event not in LISTENER_EVENTS:
            raise ValueError(f"unknown listener event {event!r}; one of {LISTENER_EVENTS}")

        def decorator(fn: _F) -> _F:
            self._listeners[event].append(fn)
            return fn

        return decorator

    def before_server_start(self, fn: _F) -> _F:
        """Called with ``(app)`` before the server listens; an error aborts the start."""
        return self.listener("before_server_start")(fn)

    def after_server_start(self, fn: _F) -> _F:
        """Called with ``(app)`` once the server listens."""
        return self.listener("after_server_start")(fn)

    def before_server_stop(self, fn: _F) -> _F:
        """Called with ``(app)`` when the shutdown begins."""
        return self.listener("before_server_stop")(fn)

    def after_server_stop(self, fn: _F) -> _F:
        """Called with ``(app)`` when the shutdown is complete."""
        return self.listener("after_server_stop")(fn)

    # Broadcast and rooms ---------------------------------------------------------

    @property
    def broker(self) -> RedisBroker | None:
        """The scale-out broker (``App(broker=RedisBroker(...))``), or ``None``."""
        return self._broker

    def room(self, name: str) -> Room:
        """The room called ``name`` (it exists while it has members)."""
        return Room(self._registry, name)

    @property
    def rooms(self) -> dict[str, int]:
        """The rooms that have members, with their sizes (a snapshot)."""
        return self._registry.room_sizes()

    def broadcast(
        self,
        data: Any,
        *,
        route: str | None = None,
        exclude: Any = None,
        encoding: str = "text",
        local: bool = False,
    ) -> int:
        """Send ``data`` to every open websocket (or those of the route named ``route``).

        Safe from any thread and never blocks: the message is encoded once and
        written by the event loop. ``exclude`` takes one websocket or several.
        With a broker, the other processes of the app get it too (``local=True``:
        this process only); see `embedws.RedisBroker` for failures.

        Returns:
            How many websockets in this process it was handed to.

        Raises:
            BrokerError: the broker refuses the message; nothing was sent.
        """
        recipients = self._registry.snapshot()
        if route is not None:
            recipients = [c for c in recipients if c.route is not None and c.route.name == route]
        return self._registry.broadcast(
            recipients, data, encoding=encoding, exclude=exclude, local=local, route=route
        )

    # Serving --------------------------------------------------------------------

    def start(
        self,
        host: str | Sequence[str] | None = "127.0.0.1",
        port: int = 0,
        *,
        ssl: SSLArg = None,
        sock: socket.socket | None = None,
        unix: str | None = None,
        **config: Any,
    ) -> Server:
        """Serve in the background; return a [`Server`][embedws.sync.Server] once listening.

        ``config`` overrides ``app.config`` for this server only.
        """
        server = start(self, host, port, ssl=ssl, sock=sock, unix=unix, **config)
        with self._running_lock:
            if server.async_server in self._running:
                self._running[server.async_server] = server
        return server

    @contextmanager
    def serve(
        self,
        host: str | Sequence[str] | None = "127.0.0.1",
        port: int = 0,
        **options: Any,
    ) -> Iterator[Server]:
        """``with app.serve(port=0) as server:``: serve for the block, then stop."""
        server = self.start(host, port, **options)
        try:
            yield server
        finally:
            server.stop()

    def run(
        self, host: str | Sequence[str] | None = "127.0.0.1", port: int = 8000, **options: Any
    ) -> None:
        """Serve until Ctrl-C / SIGTERM (from the main thread) or `stop()`.

        Returns once the graceful shutdown is complete.
        """
        run_server(lambda: self.start(host, port, **options))

    @property
    def servers(self) -> list[AsyncServer]:
        """The servers running this app now (each has ``url``, ``port``)."""
        with self._running_lock:
            return list(self._running)

    def stop(self) -> None:
        """Stop every server this app started (from any thread, listeners included)."""
        with self._running_lock:
            running = list(self._running.items())
        for async_server, handle in running:
            if handle is not None:
                handle.stop()
            else:
                async_server.close_threadsafe()

    # What the core needs (embedws.aio.server.ServedApp) ------------------------

    @property
    def request_middleware(self) -> Sequence[Callable[..., Any]]:
        return self._request_middleware

    @property
    def response_middleware(self) -> Sequence[Callable[..., Any]]:
        return self._response_middleware

    def listeners_for(self, event: str) -> Sequence[Callable[..., Any]]:
        return self._listeners[event]

    def handler_runners(
        self, loop: asyncio.AbstractEventLoop, config: Config
    ) -> Mapping[str, HandlerRunner]:
        return {
            "async": AsyncRunner(loop),
            "thread": ThreadRunner(
                loop, config.SYNC_HANDLER_THREADS, batch_sched=config.SYNC_HANDLER_SCHED_BATCH
            ),
            "greenlet": GreenletRunner(loop, config.LOOP_BLOCK_WARNING),
        }

    def hook_runner(self, loop: asyncio.AbstractEventLoop, config: Config) -> HookRunner:
        return ThreadHookRunner(loop, config.SYNC_HANDLER_THREADS)

    def server_started(self, server: AsyncServer) -> None:
        with self._running_lock:
            self._running[server] = None

    def server_stopped(self, server: AsyncServer) -> None:
        with self._running_lock:
            self._running.pop(server, None)

    def next_connection_id(self) -> int:
        return next(self._ids)

    def connection_opened(self, conn: Connection) -> None:
        self._registry.opened(conn)

    def connection_closed(self, conn: Connection) -> None:
        self._registry.closed(conn)

    def __repr__(self) -> str:
        return f"<App {self.name!r}: {len(self.router.routes)} routes>"
