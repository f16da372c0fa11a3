"""The blocking websocket given to ``def`` handlers and returned by ``sync.connect``.

Each method is a few lines around one crossing into the loop; the mechanisms
(inbox, send paths, ping waiter) are in ``embedws/sync/bridge/``. In greenlet
mode the same methods switch to the loop instead of blocking the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import greenlet
from websockets.protocol import SERVER

from ..aio.connection import Connection
from ..aio.crossing import LoopClosed
from ..errors import ConcurrencyError, WebsocketClosed
from ..message import encode_message
from ..request import Request
from ..state import State
from .bridge import (
    DirectWriteConnection,
    Inbox,
    PingWaiter,
    SendGate,
    check_can_block,
    send_from_thread,
    send_on_loop,
)
from .bridge.greenlets import park_for_message, park_until_closed

__all__ = ["Websocket"]


class Websocket:
    """A websocket with blocking methods.

    Thread contract: safe to use from any thread. Any thread may ``send``,
    ``ping``, ``pong`` and ``close`` at any time, also while another blocks in
    ``recv``; whole messages never interleave. One ``recv`` at a time: a second
    concurrent one raises [`ConcurrencyError`][embedws.ConcurrencyError].
    """

    __slots__ = ("_conn", "_direct", "_gate", "_inbox", "_loop_ident", "_recv_lock")

    def __init__(self, conn: Connection, loop_ident: int, *, batch_wakes: bool = False) -> None:
        self._conn = conn
        self._loop_ident = loop_ident
        self._gate = SendGate(conn.settings.write_limit)
        self._inbox = Inbox(conn, self._gate, batch_wakes=batch_wakes)
        self._recv_lock = threading.Lock()  # held by the one caller inside recv()
        # Sends from other threads may write to the socket themselves (bridge/sends.py).
        self._direct = conn if isinstance(conn, DirectWriteConnection) else None
        conn.set_consumer(self._inbox)
        conn.facade = self

    # Sending -------------------------------------------------------------------

    def send(self, data: Any, encoding: str = "text") -> None:
        """Send one message (types as in [`aio.Websocket.send`][embedws.aio.Websocket.send]).

        Returns once the message is written to the socket or handed to the
        event loop; blocks while the peer is slow to read, at most
        ``WEBSOCKET_WRITE_TIMEOUT``.

        Raises:
            WebsocketClosed: the connection is closed or closing.
            TypeError: ``data`` has a type that cannot be sent.
        """
        conn = self._conn
        if not conn.open:
            self._raise_closed()
        is_text, payload = encode_message(data, encoding)
        if threading.get_ident() == self._loop_ident:
            try:
                send_on_loop(conn, self._inbox, is_text, payload)
            except WebsocketClosed:
                self._raise_closed()
        elif not send_from_thread(conn, self._direct, self._inbox, self._gate, is_text, payload):
            self._raise_closed()

    # Receiving -----------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> str | bytes:
        """Receive the next message: ``str`` for text, ``bytes`` for binary.

        Args:
            timeout: seconds to wait; ``None`` waits until a message or the
                close; ``<= 0`` only returns a message already received.

        Raises:
            TimeoutError: no message came in time (nothing is lost).
            WebsocketClosed: the connection is closed.
            ConcurrencyError: another thread is in ``recv``.
            RuntimeError: called on the event loop thread, where it would deadlock.
        """
        on_loop = threading.get_ident() == self._loop_ident
        if on_loop:
            check_can_block(self._loop_ident, "recv()")
        if not self._recv_lock.acquire(blocking=False):
            raise ConcurrencyError("another thread is already waiting in recv()")
        try:
            if on_loop:  # a greenlet handler
                return park_for_message(self._conn, self._inbox, timeout)
            return self._inbox.get(timeout)
        finally:
            self._recv_lock.release()

    def __iter__(self) -> Iterator[str | bytes]:
        """Iterate over messages until the connection closes (whatever the close code)."""
        return self

    def __next__(self) -> str | bytes:
        # A method, not a generator: a parked greenlet handler keeps a
        # shallower stack, and there is no generator object per connection.
        try:
            return self.recv()
        except WebsocketClosed:
            raise StopIteration from None

    # Control -------------------------------------------------------------------

    def ping(self, data: str | bytes | None = None) -> PingWaiter:
        """Send a ping; ``wait(timeout)`` on the result for its pong.

        ``None`` sends 4 random bytes so that each pong matches its ping.

        Raises:
            WebsocketClosed: the connection is closed.
        """
        conn = self._conn
        if not conn.open:
            self._raise_closed()
        waiter = PingWaiter(conn.loop)
        payload = data.encode() if isinstance(data, str) else data
        self._call_soon(_ping, conn, bytes(payload) if payload is not None else None, waiter)
        return waiter

    def pong(self, data: str | bytes = b"") -> None:
        """Send an unsolicited pong.

        Raises:
            WebsocketClosed: the connection is closed.
        """
        conn = self._conn
        if not conn.open:
            self._raise_closed()
        self._call_soon(_pong, conn, data.encode() if isinstance(data, str) else bytes(data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection; return once the TCP connection is gone.

        Aborts the connection if the peer does not finish the closing handshake
        within ``WEBSOCKET_TIMEOUT``. On the loop thread (outside a greenlet
        handler) it starts the close and returns at once.
        """
        conn = self._conn
        if threading.get_ident() == self._loop_ident:
            conn.start_close(code, reason)
            if greenlet.getcurrent().parent is not None:
                self.wait_closed()
            return
        try:
            conn.crossing.call(conn.start_close, code, reason)
        except LoopClosed:
            return  # the connection went with it
        self.wait_closed()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the connection is closed; ``False`` if ``timeout`` passed first."""
        if self._inbox.closed:
            return True
        if threading.get_ident() == self._loop_ident:
            check_can_block(self._loop_ident, "wait_closed()")
            return park_until_closed(self._conn, self._inbox, timeout)
        return self._inbox.wait_closed(timeout)

    def _call_soon(self, fn: Any, *args: Any) -> None:
        try:
            self._conn.crossing.call(fn, *args)
        except LoopClosed:
            self._raise_closed()

    def _raise_closed(self) -> None:
        # While closing, the close codes are not known yet: wait for them
        # (bounded by the closing-handshake timeout).
        conn = self._conn
        can_wait = threading.get_ident() != self._loop_ident or greenlet.getcurrent().parent
        if can_wait and not self._inbox.closed:
            self.wait_closed(conn.settings.close_timeout + 1)
        raise conn.close_exc()

    # Properties ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the TCP connection is gone."""
        return self._inbox.closed

    @property
    def open(self) -> bool:
        """True while messages can be sent (no close frame sent or received)."""
        return self._conn.open

    @property
    def subprotocol(self) -> str | None:
        return self._conn.protocol.subprotocol

    @property
    def server_state(self) -> State:
        """State of the server side: CLOSING once it sent a close frame."""
        return self._conn.side_state(self._conn.protocol.side is SERVER)

    @property
    def client_state(self) -> State:
        """State of the client side: CLOSING once it sent a close frame."""
        return self._conn.side_state(self._conn.protocol.side is not SERVER)

    @property
    def close_code(self) -> int | None:
        """Close code received (1006 if none came); ``None`` while open."""
        return self._conn.close_code

    @property
    def close_reason(self) -> str | None:
        return self._conn.close_reason

    @property
    def request(self) -> Request | None:
        """The handshake request (server side)."""
        return self._conn.request

    @property
    def id(self) -> int:
        """Unique for the life of the app."""
        return self._conn.id

    @property
    def remote_address(self) -> Any:
        """The peer's ``(host, port)``."""
        return self._conn.remote_address

    @property
    def latency(self) -> float:
        """Round trip of the last ping that got its pong, in seconds."""
        return self._conn.latency

    @property
    def rooms(self) -> frozenset[str]:
        """Names of the rooms this websocket is in."""
        return frozenset(self._conn.rooms_joined or ())

    @property
    def connection(self) -> Connection:
        """The underlying loop-side connection (advanced use)."""
        return self._conn

    def __repr__(self) -> str:
        return f"<sync.Websocket id={self.id} {self.server_state.name}>"


def _ping(conn: Connection, data: bytes | None, waiter: PingWaiter) -> None:
    try:
        conn.send_ping(data, waiter)
    except Exception as exc:  # closed, or a duplicate payload: tell the waiter
        waiter.set_exception(exc)


def _pong(conn: Connection, data: bytes) -> None:
    try:
        conn.send_pong(data)
    except WebsocketClosed:
        pass
