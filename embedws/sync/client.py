"""The blocking client: ``embedws.sync.connect(uri)``.

The connection runs on the shared loop thread (started on first use, stopped
when the last client and server are gone); the websocket it gives is the same
thread-safe :class:`~embedws.sync.Websocket` that sync handlers get.

Direct writes
-------------
A client's ``send`` is usually followed by a ``recv``: handing each message to
the loop would cost a wake-up of the loop thread per round trip. So a plain TCP
client (not TLS) writes from the calling thread, to its own duplicate of the
socket's descriptor, when that keeps the order: nothing in the transport's
buffer and no write of this connection queued for the loop. Everything that
touches the Sans-I/O protocol or writes, on the loop or in a calling thread,
holds the connection's ``write_lock``, so frames never interleave and the
protocol's state is never shared unguarded. A write the socket only partly
takes hands the rest to the loop; later writes follow it there, in order.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from websockets.protocol import OPEN

from ..aio.client import ConnectSpec, open_connection
from ..aio.connection import Connection
from ..aio.connection import Websocket as AioWebsocket
from ..message import Fragments
from .greenlets import sleep
from .loop import LoopThread, close_at_exit
from .websocket import Websocket

__all__ = ["ClientWebsocket", "Connect", "DirectWriteConnection", "connect"]


class DirectWriteConnection(AioWebsocket):
    """A client connection that calling threads may write to directly.

    Thread contract: the loop-side methods run on the loop, as for any
    connection; :meth:`try_send` and :meth:`queued_write` from any thread.
    """

    __slots__ = ("_direct", "_pending", "_queued", "write_lock")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Guards the protocol and every write; reentrant: a failure while
        # reading (say, invalid UTF-8) fails the connection from inside.
        self.write_lock = threading.RLock()
        self._direct: socket.socket | None = None
        self._pending = 0  # writes of this connection handed to the loop, not yet done

    def enable_direct_writes(self) -> None:
        """On the loop, once open: duplicate the socket for calling threads."""
        if self.transport.get_extra_info("sslcontext") is not None:
            return  # TLS state lives in the transport: writes go through the loop
        raw = self.transport.get_extra_info("socket")
        if raw is None:
            return
        # A duplicate descriptor: when the loop closes its own, a calling
        # thread can never write to a recycled descriptor number.
        self._direct = socket.socket(fileno=os.dup(raw.fileno()))

    def try_send(self, is_text: bool, payload: bytes | Fragments) -> bool:
        """Write one message from the calling thread, if that keeps the order."""
        with self.write_lock:
            direct = self._direct
            if (
                direct is None
                or self._pending
                or self.protocol.state is not OPEN
                or self._failed
                or self.transport.get_write_buffer_size()
            ):
                return False
            self.frame_message(is_text, payload)
            rest = b""
            for data in self.protocol.data_to_send():  # data frames only: no end of stream here
                if rest:
                    rest += data
                    continue
                try:
                    sent = direct.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return True  # the peer is gone: the loop sees it and closes
                if sent < len(data):
                    rest = data[sent:]
            if rest:
                self._pending += 1
                self.crossing.call(self._write_rest, rest)
            return True

    def queued_write(self) -> None:
        """A calling thread hands a write of this connection to the loop."""
        with self.write_lock:
            self._pending += 1

    def _write_rest(self, data: bytes) -> None:
        with self.write_lock:
            self._pending -= 1
            if not self._lost:
                self.transport.write(data)

    # Everything that touches the protocol on the loop, under the lock -------------

    def data_received(self, data: bytes) -> None:
        with self.write_lock:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        with self.write_lock:
            return super().eof_received()

    def write_message(self, is_text: bool, payload: bytes | Fragments) -> None:
        with self.write_lock:
            if self._pending:  # one handed over by a calling thread: it is done now
                self._pending -= 1
            super().write_message(is_text, payload)

    def send_ping(self, data: bytes | None, waiter: Any) -> bytes:
        with self.write_lock:
            return super().send_ping(data, waiter)

    def send_pong(self, data: bytes) -> None:
        with self.write_lock:
            super().send_pong(data)

    def start_close(self, code: int = 1000, reason: str = "") -> None:
        with self.write_lock:
            super().start_close(code, reason)

    def fail(self, code: int, reason: str = "") -> None:
        with self.write_lock:
            super().fail(code, reason)

    def connection_lost(self, exc: Exception | None) -> None:
        with self.write_lock:
            if self._direct is not None:
                self._direct.close()
                self._direct = None
            super().connection_lost(exc)


class ClientWebsocket(Websocket):
    """A sync client websocket: :class:`~embedws.sync.Websocket` plus ``response``.

    Thread contract: as :class:`~embedws.sync.Websocket`. Use it as a context
    manager, or call :meth:`close`: the loop thread stops when the last client
    and server are gone. One still open when the interpreter exits is closed
    with 1001 (going away).
    """

    __slots__ = ("__weakref__", "_loop_thread", "_released")

    def __init__(self, conn: Connection, loop_thread: LoopThread) -> None:
        super().__init__(conn, loop_thread.ident)
        if isinstance(conn, DirectWriteConnection):
            self._direct = conn
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


class Connect(ConnectSpec):
    """What :func:`connect` returns: ``with`` it, iterate it, or :meth:`open` it.

    * ``with connect(uri) as ws:`` — a connected websocket, closed at the end;
    * ``ws = connect(uri).open()`` — the same without ``with`` (close it yourself);
    * ``for ws in connect(uri):`` — reconnects with exponential backoff each
      time the loop comes back (transient errors retried, others raised).
    """

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri, **options)
        self._ws: ClientWebsocket | None = None

    def open(self) -> ClientWebsocket:
        """Connect and return the websocket.

        Raises:
            ConnectError: one of its subclasses says what failed.
            RuntimeError: called on the loop thread (it would deadlock).
        """
        running = LoopThread.running()
        if running is not None:
            running.check_can_block("connect()")
        loop_thread = LoopThread.acquire()
        try:
            return loop_thread.run(self._open_on_loop(loop_thread))
        except BaseException:
            loop_thread.release()
            raise

    async def _open_on_loop(self, loop_thread: LoopThread) -> ClientWebsocket:
        conn = await open_connection(self.uri, self.options, connection_class=DirectWriteConnection)
        assert isinstance(conn, DirectWriteConnection)
        conn.enable_direct_writes()
        # Wrapped on the loop thread, so no message can slip past the inbox.
        ws = ClientWebsocket(conn, loop_thread)
        # Once the connection is gone, so is this client's hold on the loop
        # thread (release() on the loop thread schedules the stop, no join).
        conn._on_close = lambda _conn: ws.release_loop()
        return ws

    def __enter__(self) -> ClientWebsocket:
        self._ws = self.open()
        return self._ws

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            self._ws.close()

    def __iter__(self) -> Iterator[ClientWebsocket]:
        while True:
            try:
                ws = self.open()
            except Exception as exc:
                sleep(self.retry_delay(exc))
                continue
            self.connected()
            try:
                yield ws
            finally:
                ws.close()


def connect(uri: str, **options: Any) -> Connect:
    """Open a blocking websocket client (see :class:`Connect` for the three uses).

    Takes the options of :func:`embedws.aio.connect`: ``subprotocols``,
    ``headers``, ``origin``, ``open_timeout``, ``ssl``, ``compression``,
    ``max_size``, ``ping_interval``, ``ping_timeout``, ``proxy``,
    ``reconnect_delays``.
    """
    return Connect(uri, **options)
