"""The blocking clients: ``embedws.sync.connect(uri)`` and ``reconnect(uri)``.

``connect`` returns an open websocket or raises, as every blocking client does
(``socket.create_connection``, ``websockets.sync.client.connect``);
``reconnect`` is the loop that opens a new one each time the last one ends.

The connection runs on the shared loop thread (started on first use, stopped
when the last client and server are gone); the websocket it gives is the same
thread-safe [`Websocket`][embedws.sync.Websocket] that sync handlers get.

A plain TCP client's ``send`` writes from the calling thread when that keeps
the order (``embedws/sync/bridge/sends.py``): a client usually sends and then waits
for the answer, and handing each message to the loop would cost a wake-up of
the loop thread per round trip.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from ..aio.client import ConnectSpec, open_connection
from ..aio.connection import Connection
from .bridge import DirectWriteConnection, LoopThread, close_at_exit
from .bridge.greenlets import sleep
from .websocket import Websocket

__all__ = ["ClientWebsocket", "Reconnect", "connect", "reconnect"]


class ClientWebsocket(Websocket):
    """A sync client websocket: [`Websocket`][embedws.sync.Websocket] plus ``response``.

    Thread contract: as [`Websocket`][embedws.sync.Websocket]. Use it as a context
    manager, or call `close()`: the loop thread stops when the last client
    and server are gone. One still open when the interpreter exits is closed
    with 1001 (going away).
    """

    __slots__ = ("__weakref__", "_loop_thread", "_released")

    def __init__(self, conn: Connection, loop_thread: LoopThread) -> None:
        super().__init__(conn, loop_thread.ident)
        self._loop_thread = loop_thread
        self._released = threading.Lock()  # held once the loop thread is released
        close_at_exit(self, server=False)

    def close_at_exit(self) -> None:
        if not self.closed:
            self.close(1001, "going away")

    @property
    def response(self) -> Any:
        """The server's 101 response (``status``, ``headers``)."""
        return self._conn.response

    def release_loop(self) -> None:
        """Drop this client's hold on the loop thread (once; when closed)."""
        if self._released.acquire(blocking=False):
            self._loop_thread.release()

    def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            super().close(code, reason)
        finally:
            self.release_loop()

    def __enter__(self) -> ClientWebsocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(uri: str, **options: Any) -> ClientWebsocket:
    """Connect to ``uri`` and return the open websocket, or raise at once.

    ``ws = connect(uri)`` or ``with connect(uri) as ws:`` (closed at the end).
    Close a websocket opened without ``with`` yourself; one still open at
    interpreter exit is closed with 1001. `reconnect()` reconnects.

    Takes the options of [`embedws.aio.connect()`][embedws.aio.connect]: ``subprotocols``,
    ``headers``, ``origin``, ``open_timeout``, ``ssl``, ``compression``,
    ``max_size``, ``ping_interval``, ``ping_timeout``, ``proxy``.

    Raises:
        InvalidURI: ``uri`` is not a ``ws://`` or ``wss://`` URI.
        ConnectError: one of its subclasses says what failed
            (``ConnectionRefused``, ``TLSError``, ``InvalidStatus``,
            ``HandshakeTimeout``...).
        RuntimeError: called on the event loop thread (it would deadlock).
    """
    if "reconnect_delays" in options:
        raise TypeError("connect() does not reconnect: use reconnect(uri, reconnect_delays=...)")
    return _open(ConnectSpec(uri, **options))


def _open(spec: ConnectSpec) -> ClientWebsocket:
    running = LoopThread.running()
    if running is not None:
        running.check_can_block("connect()")
    loop_thread = LoopThread.acquire()
    try:
        return loop_thread.run(_open_on_loop(spec, loop_thread))
    except BaseException:
        loop_thread.release()
        raise


async def _open_on_loop(spec: ConnectSpec, loop_thread: LoopThread) -> ClientWebsocket:
    conn = await open_connection(spec.uri, spec.options, connection_class=DirectWriteConnection)
    assert isinstance(conn, DirectWriteConnection)
    conn.enable_direct_writes()
    # Wrapped on the loop thread, so no message can slip past the inbox.
    ws = ClientWebsocket(conn, loop_thread)
    # Once the connection is gone, so is this client's hold on the loop
    # thread (release() on the loop thread schedules the stop, no join).
    conn.on_close = lambda _conn: ws.release_loop()
    return ws


class Reconnect(ConnectSpec):
    """What `reconnect()` returns: iterate it for one connection after another.

    Thread contract: iterate it on one thread (the websockets it yields are
    thread-safe as usual).
    """

    def __iter__(self) -> Iterator[ClientWebsocket]:
        while True:
            try:
                ws = _open(self)
            except Exception as exc:
                sleep(self.retry_delay(exc))
                continue
            self.connected()
            try:
                yield ws
            finally:
                ws.close()


def reconnect(uri: str, **options: Any) -> Reconnect:
    """``for ws in reconnect(uri):`` — a new connection each time the last one ends.

    Each websocket is closed when its turn of the loop ends. Failed attempts
    are retried with exponential backoff when they are transient (refused,
    reset, timed out, HTTP 5xx); others (a bad URI, TLS, a 4xx) are raised.

    Takes the options of `connect()`, and ``reconnect_delays``: a callable
    returning the delays between attempts (default: exponential backoff).

    Thread contract: iterate it on one thread at a time, not on an event loop
    thread (it blocks); each websocket it gives is thread-safe.
    """
    return Reconnect(uri, **options)
