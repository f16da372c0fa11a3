"""``embedws.aio.serve`` inside trio: anyio listeners feeding the same server core.

Theory of operation
-------------------
Inside trio, ``async with serve(app, ...)`` builds a `TrioServing`. It
opens a nursery in the caller's task and starts one host task in it; the host
task opens a *shielded* cancel scope and, inside it, the nursery where every
task of the server lives: the `TrioLoop`'s
scheduler, one accept loop per listening socket (`TrioListener`), one
task per connection (`StreamTransport`),
the ``async def`` handlers and the HTTP handlers' tasks.

The shield is what makes cancellation graceful: when the block around
``async with serve(...)`` is cancelled, the server's tasks are not torn down
mid-frame; ``__aexit__`` runs the same shutdown as on asyncio (listeners, stop
accepting, close 1001 to every websocket, wait for handlers at most
``GRACEFUL_SHUTDOWN_TIMEOUT``, abort the rest), then cancels the host's scope,
and the nursery closes. Nothing the server started outlives the block, and the
block's own exception (a ``Cancelled`` included) comes out unchanged.

The server core is `Server` itself; only listening
differs (`TrioServer._listen()`): anyio's TCP and Unix listeners, or a
socket the caller bound, and TLS by wrapping each accepted stream in anyio's
``TLSStream`` (the handshake bounded by ``WEBSOCKET_TIMEOUT``). When
``accept()`` fails for lack of descriptors, the server's `AcceptBackoff`
(``embedws/aio/acceptor.py``) does what it does on asyncio: one warning, idle
HTTP connections and silent TLS handshakes closed to make room, a growing
delay when there was nothing to close.

Thread contract: everything here runs on the trio thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import anyio
import trio
from anyio.abc import SocketAttribute, SocketListener
from anyio.streams.tls import TLSStream

from ..config import Config
from .acceptor import (
    BACKLOG,
    CONNECTION_ERRORS,
    MAX_DELAY,
    OUT_OF_RESOURCES,
    AcceptBackoff,
    IdleSince,
    next_idle_rank,
)
from .server import Listening, ServedApp, Server
from .trio_loop import TrioLoop
from .trio_transport import StreamTransport

__all__ = ["TrioListener", "TrioServer", "TrioServing"]

logger = logging.getLogger("embedws.server")


class TrioListener:
    """Accepts on one anyio listener and serves each connection in the loop's nursery.

    Thread contract: the trio thread only.
    """

    def __init__(
        self,
        loop: TrioLoop,
        listener: SocketListener,
        factory: Callable[[], Any],
        *,
        ssl: ssl_module.SSLContext | None,
        handshake_timeout: float,
        backoff: AcceptBackoff,
    ) -> None:
        self._loop = loop
        self._listener = listener
        self._factory = factory
        self._ssl = ssl
        self._handshake_timeout = handshake_timeout
        self._backoff = backoff
        # TLS handshakes in progress: their scope -> when it was accepted.
        self._handshakes: dict[trio.CancelScope, IdleSince] = {}
        self._socket: socket.socket = listener.extra(SocketAttribute.raw_socket)
        self._task = loop.create_task(self._accept(), name="embedws accept")

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._socket,)

    @property
    def pending(self) -> int:
        """TLS connections accepted and not served yet (in the TLS handshake)."""
        return len(self._handshakes)

    def handshakes(self) -> list[tuple[IdleSince, Callable[[], object]]]:
        """TLS handshakes in progress: (when accepted, what aborts it)."""
        return [(since, scope.cancel) for scope, since in self._handshakes.items()]

    def close(self) -> None:
        self._task.cancel()

    async def wait_closed(self) -> None:
        await self._task.wait_done()
        with trio.CancelScope(shield=True):
            await self._listener.aclose()

    async def _accept(self) -> None:
        backoff = self._backoff
        while True:
            try:
                stream = await self._listener.accept()
            except anyio.BrokenResourceError as exc:  # anyio's wrapper of accept's OSError
                error = exc.__cause__
                if isinstance(error, OSError) and error.errno in OUT_OF_RESOURCES:
                    await backoff.make_room(error, self._socket)
                elif not isinstance(error, OSError) or error.errno not in CONNECTION_ERRORS:
                    # Unknown, and maybe lasting: slow down rather than spin.
                    logger.error("accept() failed", exc_info=True)
                    await trio.sleep(MAX_DELAY)
                continue
            backoff.accepted()
            self._loop.nursery.start_soon(self._serve, stream)

    async def _serve(self, stream: Any) -> None:
        if self._ssl is not None:
            scope = trio.CancelScope(deadline=trio.current_time() + self._handshake_timeout)
            self._handshakes[scope] = (self._loop.time(), next_idle_rank())
            try:
                with scope:
                    stream = await TLSStream.wrap(
                        stream, server_side=True, ssl_context=self._ssl, standard_compatible=False
                    )
            except Exception as exc:  # a reset, a refused certificate, an EOF
                logger.debug("TLS handshake failed: %r", exc)
            finally:
                del self._handshakes[scope]
            if scope.cancelled_caught or not isinstance(stream, TLSStream):
                # Timed out, closed to make room (handshakes()), or failed.
                await anyio.aclose_forcefully(stream)
                return
        await StreamTransport(self._loop, stream, self._factory()).run()


class TrioServer(Server):
    """A `Server` listening through anyio, inside trio.

    Thread contract: use it on the trio thread only.
    """

    def __init__(self, app: ServedApp, config: Config, loop: TrioLoop) -> None:
        # The core is typed for asyncio's loop; a TrioLoop has the methods it calls.
        super().__init__(app, config, cast(asyncio.AbstractEventLoop, loop))
        self.trio_loop = loop

    async def _listen(
        self,
        host: str | Sequence[str] | None,
        port: int,
        context: ssl_module.SSLContext | None,
        sock: socket.socket | None,
        unix: str | None,
    ) -> list[Listening]:
        listeners: list[SocketListener] = []
        if unix is not None:
            listeners.append(await anyio.create_unix_listener(unix))
        elif sock is not None:
            sock.setblocking(False)
            sock.listen(BACKLOG)
            listeners.append(await SocketListener.from_socket(sock))
        else:
            hosts = [host] if host is None or isinstance(host, str) else list(host)
            for name in hosts:
                multi = await anyio.create_tcp_listener(
                    local_host=name, local_port=port, backlog=BACKLOG
                )
                for listener in multi.listeners:
                    assert isinstance(listener, SocketListener)
                    listeners.append(listener)
                    if port == 0:  # the others take the port the first one got
                        port = int(listener.extra(SocketAttribute.local_port))
        return [
            TrioListener(
                self.trio_loop,
                listener,
                self._make_http_connection,
                ssl=context,
                handshake_timeout=self.config.WEBSOCKET_TIMEOUT,
                backoff=self._backoff,
            )
            for listener in listeners
        ]


def _refuse_greenlet_mode(app: ServedApp, config: Config) -> None:
    if any(
        not route.is_async and (route.mode or config.SYNC_HANDLER_MODE) == "greenlet"
        for route in app.router.routes
    ):
        raise RuntimeError(
            "greenlet mode (SYNC_HANDLER_MODE='greenlet', or mode='greenlet' on a route) "
            "runs on asyncio only; inside trio, def handlers run in thread mode"
        )


class TrioServing:
    """What ``async with embedws.aio.serve(...)`` does inside trio.

    Thread contract: enter and exit it in one trio task.
    """

    def __init__(
        self,
        app: ServedApp,
        config: Config,
        host: str | Sequence[str] | None,
        port: int,
        *,
        ssl: ssl_module.SSLContext | Mapping[str, Any] | None,
        sock: socket.socket | None,
        unix: str | None,
    ) -> None:
        self._app = app
        self._config = config
        self._host, self._port = host, port
        self._ssl, self._sock, self._unix = ssl, sock, unix
        self._outer: Any = None  # the nursery manager of the caller's task
        self._scope: trio.CancelScope | None = None  # the host task's shielded scope
        self._server: TrioServer | None = None

    async def _keep_nursery(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope(shield=True) as scope:
            async with trio.open_nursery() as nursery:
                task_status.started((nursery, scope))
                await trio.sleep_forever()

    async def __aenter__(self) -> TrioServer:
        _refuse_greenlet_mode(self._app, self._config)
        self._outer = trio.open_nursery()
        outer = await self._outer.__aenter__()
        try:
            nursery, self._scope = await outer.start(self._keep_nursery)
            loop = TrioLoop(nursery)
            nursery.start_soon(loop.run_scheduler)
            server = self._server = TrioServer(self._app, self._config, loop)
            await server.start(
                self._host, self._port, ssl=self._ssl, sock=self._sock, unix=self._unix
            )
        except BaseException:
            await self._finish()
            raise
        return server

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._finish()

    async def _finish(self) -> None:
        with trio.CancelScope(shield=True):
            server = self._server
            if server is not None:
                server.close()
                await server.wait_closed()
        if self._scope is not None:
            self._scope.cancel()
        # The caller's exception, if any, is theirs to see as it is: the
        # nursery is told of none (it would wrap it in an ExceptionGroup).
        await self._outer.__aexit__(None, None, None)
